"""The graph LiteRT runs: the model with a fixed-capacity KV cache, traced once per signature.

LiteRT wants static shapes, so the cache does not grow by torch.cat as in `forward_cached`: each
of the n_layer positions owns a (1, n_kv_head, capacity, hd) K and V buffer that the signature takes
in and hands back updated, written at `input_pos` by an update function (litert-torch's
dynamic_update_slice when converting, a plain slice copy in eager torch). The runtime binds one
buffer as both the input and the output of a cache, so the update happens in place.

A signature attends over the first `window` cache positions only (its bucket, <= capacity): the
runtime calls the smallest window that holds every position written so far, so a short reply does
not pay for the whole cache. Grouped-query attention multiplies each K/V group by its `rep` query
heads side by side ((nkv, rep*T, hd) @ (nkv, hd, window)), so the repeated K/V never exist.
The attention mask is finite (additive `mask_value`: -1e4, or -30 for full-integer INT8, whose
calibration a wider range wrecks; -inf would make NaNs). Weights and submodules are the Transformer's own, so every signature shares one
set of tensors.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ...pipeline.model import Transformer, apply_rope, rope_tables


def slice_update(cache, new, pos):
    """Eager stand-in for dynamic_update_slice: cache (B, nkv, S, hd), new (B, nkv, T, hd) at pos."""
    p = int(pos)
    out = cache.clone()
    out[:, :, p:p + new.shape[2]] = new
    return out


def litert_update(cache, new, pos):
    """litert-torch's dynamic_update_slice (lowers to the TFLite op): only import in the toolchain venv."""
    from litert_torch.generative.custom_ops.dynamic_update_slice import dynamic_update_slice
    zero = torch.zeros([], dtype=torch.int32)
    return dynamic_update_slice(cache, new, [zero, zero, pos.reshape([]).int(), zero])


def cache_names(n_layer: int) -> list[str]:
    return [f"k_{i}" for i in range(n_layer)] + [f"v_{i}" for i in range(n_layer)]


class CachedLM(nn.Module):
    """forward(tokens (1, T) int32, input_pos (T,) int32, k_0.., v_0.., last) -> {'logits', k_0.., v_0..}.
    input_pos must be contiguous and end inside the window: input_pos[-1] < window <= capacity.
    last (1,) int32, prefill signatures only: the LM head runs on that position alone (logits
    (1, 1, V)), the prompt's last real token in a padded chunk; without it, on every position."""

    def __init__(self, model: Transformer, capacity: int, mask_value: float = -30.0, update=slice_update,
                 window: int | None = None):
        super().__init__()
        self.model, self.capacity, self.mask_value, self.update = model, capacity, mask_value, update
        self.window = window or capacity

    def empty_cache(self) -> dict:
        c = self.model.cfg
        shape = (1, c.n_kv_head, self.capacity, c.head_dim)
        return {n: torch.zeros(shape) for n in cache_names(c.n_layer)}

    def sample_inputs(self, T: int) -> dict:
        """A call's inputs; a prefill (T > 1) takes `last`: its head runs on one position."""
        last = {"last": torch.tensor([T - 1], dtype=torch.int32)} if T > 1 else {}
        return dict(tokens=torch.zeros((1, T), dtype=torch.int32),
                    input_pos=torch.arange(T, dtype=torch.int32), **self.empty_cache(), **last)

    def forward(self, tokens, input_pos, last=None, **caches):
        m = self.model
        T = tokens.shape[1]
        rep = m.cfg.n_head // m.cfg.n_kv_head
        cos, sin = rope_tables(m.cfg, input_pos[0].float(), T)  # (T, hd) for contiguous positions
        k_pos = torch.arange(self.window, dtype=torch.int32)
        q_pos = input_pos.repeat(rep)  # (rep*T,): the rows of one K/V group's scores
        mask = torch.where(k_pos[None, :] <= q_pos[:, None], 0.0, self.mask_value)  # (rep*T, window)
        x = m.embed_tokens(tokens)
        out = {}
        for i, li in enumerate(m.layer_order()):
            blk = m.layers[li]
            a, out[f"k_{i}"], out[f"v_{i}"] = self._attend(
                blk.self_attn, blk.input_layernorm(x), cos, sin, caches[f"k_{i}"], caches[f"v_{i}"],
                input_pos[0], mask)
            x = x + a
            x = x + blk.mlp(blk.post_attention_layernorm(x))
        if last is not None:  # serving needs one position: the head's 64 x V products were 15 % of a prefill
            x = torch.index_select(x, 1, last)
        return {"logits": m.lm_head(m.norm(x)), **out}

    def _attend(self, attn, x, cos, sin, k_cache, v_cache, pos, mask):
        """Grouped-query attention over the window's part of the cache; x (B, T, C)."""
        cfg = attn.cfg
        B, T, _ = x.shape
        hd, nh, nkv, W = cfg.head_dim, cfg.n_head, cfg.n_kv_head, self.window
        q = attn.q_proj(x).view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = attn.k_proj(x).view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = attn.v_proj(x).view(B, T, nkv, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin) * (1.0 / math.sqrt(hd)), apply_rope(k, cos, sin)
        k_cache, v_cache = self.update(k_cache, k, pos), self.update(v_cache, v, pos)
        kk, vv = k_cache[:, :, :W], v_cache[:, :, :W]  # (B, nkv, W, hd)
        qg = q.reshape(B, nkv, (nh // nkv) * T, hd)  # head h = g*rep + r sits in group g
        att = qg @ kk.transpose(-2, -1) + mask  # (B, nkv, rep*T, W)
        y = (torch.softmax(att, dim=-1) @ vv).reshape(B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)
        if attn.g_proj is not None:
            y = y * torch.sigmoid(attn.g_proj(x))
        return attn.o_proj(y), k_cache, v_cache
