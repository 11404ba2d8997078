"""QAT int8: fake-quant fine-tuning with a straight-through estimator, exported by snapping.

The default scheme simulates exactly what the x86 int8 artifact computes (ORT `quantize_dynamic`,
per-channel, on the fused graph: backends/ort/fused.py `w8a8`; read off its graph):
  Linear weights   per-output-channel symmetric int8 on ORT's reduced range [-64, 64], scale =
                   max|w_row| / 64 (quantize_w8a8 in backends/ort/fused.py: 7 bits, so CPUs without
                   VNNI do not saturate); the packed QKV MatMul has the same per-column grids as q, k
                   and v apart
  Linear inputs    one asymmetric uint8 grid per call: scale = (max(0, x) - min(0, x)) / 255 and a
                   zero point (DynamicQuantizeLinear); a call is one sequence, so one grid per
                   sequence of the batch
  embedding        "channel": per-row symmetric int8 on the same grid, the tied lm_head's own int8
                   matrix (the fused graph gathers the embedding from it); the lm_head's input is
                   quantised like any Linear's. "tensor_u8" is the torch.export graph's scheme
                   (`--set build.graph=export`): one asymmetric uint8 grid for the whole matrix (its
                   Gather is quantised like an activation), and a tied lm_head multiplies by that
                   dequantised matrix in float.
and gradients pass through every rounding unchanged (STE). The scales are the ones ORT will compute
from the weights as they learn, so the export is plain rather than special: `snap` moves each
weight onto its grid, and ORT's quantiser then lands on the same grid — the artifact holds the
weights QAT trained with, not a fresh rounding of float weights (tests/test_compress.py checks
both the MatMul weights and the embedding against the ORT graph).

`act = "token"` (symmetric int8 per token) is there for runtimes that quantise that way; "none"
turns either off.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import UserError

ACT = ("tensor_u8", "token", "none")
EMBEDDING = ("tensor_u8", "channel", "none")


@dataclass
class QATConfig:
    # Linear weight grid [-qmax, qmax] per output channel (and the tied head's, per row); 64 = ORT's
    # W8A8 (reduce_range: backends/ort/fused.py quantize_w8a8)
    weight_qmax: int = 64
    act: str = "tensor_u8"  # Linear inputs: tensor_u8 (ORT, one uint8 grid per sequence) | token | none
    # embedding and tied lm_head: channel (the fused graph) | tensor_u8 (export graph) | none
    embedding: str = "channel"

    def __post_init__(self):
        for key, allowed in (("act", ACT), ("embedding", EMBEDDING)):
            if getattr(self, key) not in allowed:
                raise UserError(f"--set {key}={getattr(self, key)}: use one of {', '.join(allowed)}")


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return x + (q - x).detach()  # forward q, backward identity


def weight_scale(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """(..., C) -> (..., 1) symmetric scales, one a row: a weight's output channel, or a token."""
    return w.detach().abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax


def round_channel(w: torch.Tensor, qmax: int) -> torch.Tensor:
    s = weight_scale(w, qmax)
    return torch.clamp(torch.round(w.detach() / s), -qmax, qmax) * s


def u8_grid(x: torch.Tensor, dims) -> tuple[torch.Tensor, torch.Tensor]:
    """ORT's asymmetric uint8 (scale, zero point) over `dims`, the range widened to hold 0."""
    lo = x.detach().amin(dims, keepdim=True).clamp_max(0)
    hi = x.detach().amax(dims, keepdim=True).clamp_min(0)
    scale = ((hi - lo) / 255).clamp_min(1e-12)
    return scale, torch.round(-lo / scale).clamp(0, 255)


def round_u8(x: torch.Tensor, dims) -> torch.Tensor:
    s, zp = u8_grid(x, dims)
    return (torch.clamp(torch.round(x.detach() / s) + zp, 0, 255) - zp) * s


def fake_quant_weight(w: torch.Tensor, qmax: int) -> torch.Tensor:
    return _ste(w, round_channel(w, qmax))


def fake_quant_act(x: torch.Tensor, how: str) -> torch.Tensor:
    """x (B, T, C) or (T, C): tensor_u8 = one grid per sequence; token = symmetric int8 per token."""
    if how == "none":
        return x
    if how == "token":
        return _ste(x, round_channel(x, 127))
    return _ste(x, round_u8(x, tuple(range(1 if x.dim() > 2 else 0, x.dim()))))


def round_embedding(w: torch.Tensor, how: str, qmax: int) -> torch.Tensor:
    return round_u8(w, (0, 1)) if how == "tensor_u8" else round_channel(w, qmax)


def _linear_forward(self, x):
    return F.linear(fake_quant_act(x, self.qat.act), fake_quant_weight(self.weight, self.qat.weight_qmax),
                    self.bias)


def _table(self) -> torch.Tensor:
    """The embedding (and tied head) matrix as the artifact holds it, gradients passed through."""
    return _ste(self.weight, round_embedding(self.weight, self.qat.embedding, self.qat.weight_qmax))


def _embedding_forward(self, idx):
    return F.embedding(idx, _table(self))


def _tied_head_forward(self, x):
    """channel: the fused graph's lm_head is a W8A8 MatMul like the others (its input quantised);
    tensor_u8: the export graph multiplies the dequantised uint8 embedding in float."""
    if self.qat.embedding == "channel":
        x = fake_quant_act(x, self.qat.act)
    return F.linear(x, _table(self), self.bias)


def tied(model) -> bool:
    return model.lm_head.weight is model.embed_tokens.weight


def quantised_linears(model) -> list[nn.Linear]:
    """The Linears that become int8 MatMuls (a tied lm_head goes with the embedding instead)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and not (m is model.lm_head and tied(model))]


def enable(model, c: QATConfig = QATConfig()):
    """Swap the forwards for fake-quant ones (state_dict names unchanged)."""
    swaps = [(m, _linear_forward) for m in quantised_linears(model)]
    if c.embedding != "none":
        swaps.append((model.embed_tokens, _embedding_forward))
        if tied(model):
            swaps.append((model.lm_head, _tied_head_forward))
    for m, fwd in swaps:
        m.qat = c
        m.forward = types.MethodType(fwd, m)
    return model


def disable(model):
    for m in model.modules():
        if "forward" in m.__dict__:
            del m.forward
    return model


@torch.no_grad()
def snap(model, c: QATConfig = QATConfig()) -> int:
    """Move each quantised weight onto its grid in place; returns the matrices snapped."""
    ms = quantised_linears(model)
    for m in ms:
        m.weight.copy_(round_channel(m.weight, c.weight_qmax))
    if c.embedding != "none":
        w = model.embed_tokens.weight
        w.copy_(round_embedding(w, c.embedding, c.weight_qmax))
    return len(ms) + (c.embedding != "none")


@torch.no_grad()
def grid_error(model, c: QATConfig = QATConfig()) -> float:
    """Largest distance, in grid steps, of any quantised weight from its grid (0 after snap)."""
    pairs = [(m.weight, weight_scale(m.weight, c.weight_qmax)) for m in quantised_linears(model)]
    w = model.embed_tokens.weight
    if c.embedding != "none":  # a uint8 zero point is an integer: the distance is the same
        s = u8_grid(w, (0, 1))[0] if c.embedding == "tensor_u8" else weight_scale(w, c.weight_qmax)
        pairs.append((w, s))
    return max((float((w / s - (w / s).round()).abs().max()) for w, s in pairs), default=0.0)
