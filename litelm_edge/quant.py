"""QAT int8: fake-quant fine-tuning with a straight-through estimator, exported by snapping.

While fine-tuning, every nn.Linear (attention, MLP, lm_head) computes with
  weights: per-output-channel symmetric, scale = max|w_row| / qmax, rounded to [-qmax, qmax]
  inputs:  per-token symmetric int8 (scale = max|x_token| / 127)
and gradients pass through the rounding unchanged (STE). The scales are the max-abs scales of the
weights as they learn, so the export is equivalent rather than special: `snap` rounds each weight
onto its grid, and a per-channel max-abs quantiser (ORT's) then lands on exactly the same grid —
the int8 artifact holds the weights QAT trained with, not a fresh rounding of float weights.

qmax = 127 matches ORT's dynamic per-channel MatMul weights as measured here (int8 values reach
+-127; tests/test_compress.py checks that dequantised ORT weights equal the snapped torch weights).
ORT quantises activations per tensor (uint8, per call), coarser than the per-token simulation
here, and its embedding Gather per tensor: measure the artifact, do not assume.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class QATConfig:
    weight_qmax: int = 127  # weight grid [-qmax, qmax]; 127 = ORT dynamic per-channel int8 (measured)
    act_qmax: int = 127  # per-token activation grid; 0 disables activation fake-quant
    lm_head: bool = True  # fake-quant (and snap) the output projection too (tied: the embedding)


def weight_scale(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """(out, in) -> (out, 1) per-channel symmetric scales."""
    return w.detach().abs().amax(1, keepdim=True).clamp_min(1e-12) / qmax


def fake_quant_weight(w: torch.Tensor, qmax: int) -> torch.Tensor:
    s = weight_scale(w, qmax)
    q = torch.clamp(torch.round(w / s), -qmax, qmax) * s
    return w + (q - w).detach()  # STE: forward q, backward identity


def fake_quant_tokens(x: torch.Tensor, qmax: int) -> torch.Tensor:
    """(..., C): one symmetric scale per token (last dim reduced)."""
    s = x.detach().abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
    q = torch.clamp(torch.round(x / s), -qmax, qmax) * s
    return x + (q - x).detach()


def _qat_forward(self, x):
    if self.qat_act_qmax:
        x = fake_quant_tokens(x, self.qat_act_qmax)
    return F.linear(x, fake_quant_weight(self.weight, self.qat_weight_qmax), self.bias)


def quantised_linears(model, c: QATConfig) -> list[nn.Linear]:
    return [m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and (c.lm_head or name != "lm_head")]


def enable(model, c: QATConfig = QATConfig()):
    """Swap each target Linear's forward for the fake-quant one (state_dict names unchanged)."""
    for m in quantised_linears(model, c):
        m.qat_weight_qmax, m.qat_act_qmax = c.weight_qmax, c.act_qmax
        m.forward = types.MethodType(_qat_forward, m)
    return model


def disable(model):
    for m in model.modules():
        if "forward" in m.__dict__:
            del m.forward
    return model


@torch.no_grad()
def snap(model, c: QATConfig = QATConfig()) -> int:
    """Round each target weight onto its per-channel grid in place; returns the matrices snapped."""
    ms = quantised_linears(model, c)
    for m in ms:
        s = weight_scale(m.weight, c.weight_qmax)
        m.weight.copy_(torch.clamp(torch.round(m.weight / s), -c.weight_qmax, c.weight_qmax) * s)
    return len(ms)


@torch.no_grad()
def grid_error(model, c: QATConfig = QATConfig()) -> float:
    """Largest distance, in grid steps, of any target weight from its grid (0 after snap)."""
    worst = 0.0
    for m in quantised_linears(model, c):
        q = m.weight / weight_scale(m.weight, c.weight_qmax)
        worst = max(worst, float((q - q.round()).abs().max()))
    return worst
