"""The torch graph that TVM compiles: the model with its Linear weights laid out for a CPU.

Every Linear becomes `x @ W` with W stored (in, out) = (K, N), so the compiled matmul streams W
along N (contiguous, vectorisable) and no transpose is left in the graph. The tied embedding
gathers columns of the lm_head's (C, V) matrix, so tied weights are stored once.

int8 is weight-only: per-output-channel symmetric int8 with one fp32 scale per column, dequantised
inside the graph (`Wq.float() * scale`). The compiled library embeds the int8 tensors, so the
artifact is about a quarter of fp32. Runs in the TVM toolchain venv (torch only).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def quantize_kn(w_kn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, N) fp32 -> (K, N) int8, (N,) fp32 scale; symmetric, one scale per output channel."""
    amax = w_kn.abs().amax(dim=0).clamp(min=1e-12)
    scale = amax / 127.0
    q = torch.round(w_kn / scale).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


class KNLinear(nn.Module):
    """y = x @ W (+ b) with W (K, N): fp32, or int8 + per-column scale dequantised in the graph;
    b (N,) fp32 where the Linear has one (Qwen2's q/k/v)."""

    def __init__(self, weight_nk: torch.Tensor, precision: str, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        w = weight_nk.detach().t().contiguous()  # (N, K) torch layout -> (K, N)
        self.int8 = precision == "int8"
        if self.int8:
            q, s = quantize_kn(w)
            self.register_buffer("wq", q)
            self.register_buffer("scale", s)
        else:
            self.register_buffer("w", w)

    def weight_kn(self) -> torch.Tensor:
        return self.wq.float() * self.scale if self.int8 else self.w  # (K, N)

    def forward(self, x):  # (..., K) -> (..., N), as a 2-D matmul: a 3-D one broadcasts W per call
        y = x.reshape(-1, x.shape[-1]) @ self.weight_kn()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], -1)

    def columns(self, idx):
        """idx (B, T) -> W[:, idx] as (B, T, K): the embedding rows of a tied lm_head."""
        flat = idx.reshape(-1)  # index_select, not w[:, idx]: TVM's FuseTIR rejects the latter
        if self.int8:
            cols = torch.index_select(self.wq, 1, flat).float() * torch.index_select(self.scale, 0, flat)
        else:
            cols = torch.index_select(self.w, 1, flat)  # (K, B*T)
        return cols.t().reshape(*idx.shape, -1)


class TiedEmbedding(nn.Module):
    """Embedding that reads the (C, V) lm_head matrix, so the tied weight is stored once."""

    def __init__(self, head: KNLinear):
        super().__init__()
        self.head = [head]  # a list: not a submodule, so its buffers are not registered twice

    def forward(self, idx):  # (B, T) -> (B, T, C)
        return self.head[0].columns(idx)


def _swap_linears(module: nn.Module, precision: str, done: dict):
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            if id(child) not in done:  # shared blocks: one converted module per original
                done[id(child)] = KNLinear(child.weight, precision, child.bias)
            setattr(module, name, done[id(child)])
        else:
            _swap_linears(child, precision, done)


def prepare(model, precision: str):
    """The model with KN (fp32 or int8) linears, in place; model must be eval and fp32."""
    if precision not in ("fp32", "int8"):
        raise ValueError(f"unknown precision {precision!r}, have: fp32, int8")
    tied = model.cfg.tie_embeddings
    emb = model.embed_tokens.weight.detach()
    _swap_linears(model, precision, {})
    if tied:
        model.embed_tokens = TiedEmbedding(model.lm_head)
    elif precision == "int8":  # untied: quantise the table per row (= per output channel)
        model.embed_tokens = TiedEmbedding(KNLinear(emb, "int8"))
    return model


class CachedForward(nn.Module):
    """forward(idx (1, T), k_cache, v_cache (L, 1, nkv, P, hd)) -> logits (1, T, V), k, v (P+T)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, k_cache, v_cache):
        return self.model.forward_cached(idx, k_cache, v_cache)


def export(model):
    """torch.export with dynamic T (new tokens) and P (cached tokens): one graph serves
    prefill (P = 0) and decode (T = 1)."""
    cfg = model.cfg
    T = torch.export.Dim("T", min=1, max=cfg.max_seq_len)
    P = torch.export.Dim("P", min=0, max=cfg.max_seq_len)
    idx = torch.zeros((1, 8), dtype=torch.int64)
    k = torch.zeros(cfg.n_layer, 1, cfg.n_kv_head, 4, cfg.head_dim)
    with torch.no_grad():
        return torch.export.export(CachedForward(model).eval(), (idx, k, k.clone()),
                                   dynamic_shapes=({1: T}, {3: P}, {3: P}))
