"""The model: a decoder-only transformer in the Llama/MiniMind family (and Qwen2's), in one file.

RMSNorm, RoPE (tables computed from torch.arange so exported graphs keep a dynamic length),
grouped-query attention through scaled_dot_product_attention, optional q/k/v biases (Qwen2),
SwiGLU, tied embeddings, an optional sigmoid-gated attention output, optional cross-layer weight
sharing, and a KV-cache forward.
Module names follow HF Llama so a checkpoint maps 1:1 onto LlamaForCausalLM (Qwen2ForCausalLM
when the biases are there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    vocab_size: int = 6400  # MiniMind's tokenizer size; presets override
    n_layer: int = 8  # transformer blocks run per forward (shared blocks count once per use)
    n_embd: int = 512  # residual width C
    n_head: int = 8  # query heads; head size = n_embd // n_head
    n_kv_head: int = 2  # key/value heads (GQA): n_head must be a multiple
    intermediate_size: int = 1408  # SwiGLU hidden width
    max_seq_len: int = 512  # longest sequence trained on and the default KV-cache capacity
    rope_theta: float = 1e6  # RoPE base, as MiniMind
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # lm_head shares the embedding matrix
    gated_attn: bool = False  # sigmoid gate on the attention output (Qwen3-Next style)
    share_every: int = 1  # consecutive layers sharing one block's weights (1 = no sharing)
    dropout: float = 0.0  # residual/attention dropout at training time
    head_size: int = 0  # per-head width; 0 = n_embd // n_head (structured head pruning sets it)
    attn_bias: bool = False  # q/k/v projections add a bias (Qwen2 / Qwen2.5); o_proj never does

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def n_unique_layers(self) -> int:
        return math.ceil(self.n_layer / self.share_every)

    def validate(self):
        from ..config import UserError, at_least
        at_least(self, vocab_size=1, n_layer=1, n_embd=1, n_head=1, n_kv_head=1, intermediate_size=1,
                 max_seq_len=1, share_every=1, head_size=0)
        if self.rope_theta <= 0 or self.norm_eps <= 0 or not 0 <= self.dropout < 1:
            raise UserError(f"rope_theta ({self.rope_theta}) and norm_eps ({self.norm_eps}) must be > 0 "
                            f"and dropout ({self.dropout}) in [0, 1)")
        if not self.head_size and self.n_embd % self.n_head:
            raise UserError(f"n_embd ({self.n_embd}) must divide by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise UserError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        if self.head_dim % 2:
            raise UserError(f"the head size ({self.head_dim}) must be even (RoPE rotates pairs)")
        return self


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.type_as(x)


def rope_tables(cfg: ModelConfig, start, T: int, device=None):
    """cos, sin of shape (T, head_dim) for positions start..start+T-1 (HF Llama layout)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, device=device).float() / hd))
    # int add first: TVM's importer rejects float + SymInt
    pos = (torch.arange(T, device=device) + start).float()
    freqs = pos[:, None] * inv_freq[None, :]  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * hd, bias=cfg.attn_bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * hd, bias=cfg.attn_bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * hd, bias=cfg.attn_bias)
        self.o_proj = nn.Linear(cfg.n_head * hd, cfg.n_embd, bias=False)
        self.g_proj = nn.Linear(cfg.n_embd, cfg.n_head * hd, bias=False) if cfg.gated_attn else None

    def forward(self, x, cos, sin, past_kv=None, mask=None):
        """x: (B, T, C); past_kv: ((B, nkv, P, hd), (B, nkv, P, hd)) or None.

        Returns y (B, T, C) and the new (k, v) of length P+T.
        """
        cfg = self.cfg
        B, T, C = x.shape
        hd, nh, nkv = cfg.head_dim, cfg.n_head, cfg.n_kv_head
        q = self.q_proj(x).view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, nkv, hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_kv is not None:
            k = torch.cat((past_kv[0], k), dim=2)
            v = torch.cat((past_kv[1], v), dim=2)
        new_kv = (k, v)
        rep = nh // nkv
        S = k.shape[2]
        k = k[:, :, None].expand(B, nkv, rep, S, hd).reshape(B, nh, S, hd)
        v = v[:, :, None].expand(B, nkv, rep, S, hd).reshape(B, nh, S, hd)
        p = cfg.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)
        if self.g_proj is not None:
            y = y * torch.sigmoid(self.g_proj(x))
        return self.o_proj(y), new_kv


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, past_kv=None, mask=None):
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, past_kv, mask)
        x = x + self.drop(a)
        x = x + self.drop(self.mlp(self.post_attention_layernorm(x)))
        return x, kv


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_unique_layers))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def layer_order(self) -> list[int]:
        """Which unique block runs at each of the n_layer positions."""
        return [i // self.cfg.share_every for i in range(self.cfg.n_layer)]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied/shared weights counted once

    def forward(self, idx, targets=None):
        """idx: (B, T) token ids -> logits (B, T, V), and the mean loss when targets are given."""
        B, T = idx.shape
        cos, sin = rope_tables(self.cfg, 0, T, idx.device)
        x = self.embed_tokens(idx)
        for li in self.layer_order():
            x, _ = self.layers[li](x, cos, sin)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def forward_cached(self, idx, k_cache, v_cache):
        """KV-cache forward, the graph that prefill and decode exports trace.

        idx: (B, T); k_cache, v_cache: (n_layer, B, n_kv_head, P, hd), P may be 0.
        Returns logits (B, T, V) and caches of length P+T.
        """
        B, T = idx.shape
        P = k_cache.shape[3]
        cos, sin = rope_tables(self.cfg, P, T, idx.device)
        q_pos = torch.arange(T, device=idx.device) + P
        k_pos = torch.arange(P + T, device=idx.device)
        mask = k_pos[None, :] <= q_pos[:, None]  # (T, P+T) causal over past and present
        x = self.embed_tokens(idx)
        ks, vs = [], []
        for i, li in enumerate(self.layer_order()):
            x, (k, v) = self.layers[li](x, cos, sin, (k_cache[i], v_cache[i]), mask)
            ks.append(k)
            vs.append(v)
        logits = self.lm_head(self.norm(x))
        return logits, torch.stack(ks), torch.stack(vs)

    def empty_cache(self, B: int = 1, dtype=torch.float32, device=None):
        c = self.cfg
        shape = (c.n_layer, B, c.n_kv_head, 0, c.head_dim)
        return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                 eos_id: int | None = None, generator=None):
        """Greedy when temperature == 0, else sampled; uses the KV cache. idx: (1, T)."""
        k, v = self.empty_cache(idx.shape[0], device=idx.device)
        logits, k, v = self.forward_cached(idx, k, v)
        out = idx
        for _ in range(max_new_tokens):
            nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)
            out = torch.cat((out, nxt), dim=1)
            if eos_id is not None and int(nxt[0, 0]) == eos_id:
                break
            if out.shape[1] >= self.cfg.max_seq_len:
                break
            logits, k, v = self.forward_cached(nxt, k, v)
        return out


def sample_next(logits, temperature: float, top_k: int | None, generator=None):
    """logits (B, V) -> next ids (B, 1)."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)


def preset(name: str, sets: dict | None = None) -> ModelConfig:
    """A model preset from model/NAME.toml ([model] table), then --set overrides."""
    from ..config import UserError, unknown_key
    from ..config import named_toml, override
    path, data = named_toml("model", name)
    for table in data:
        if table != "model":
            raise unknown_key(table, ["model"], str(path), "table")
    if not isinstance(data.get("model", {}), dict):
        raise UserError(f"{path}: [model] must be a table of keys")
    cfg = override(ModelConfig(), data.get("model", {}), where=f"{path} [model]")
    return override(cfg, sets or {}, where="--set model.*")
