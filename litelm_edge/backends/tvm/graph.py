"""The torch graph that TVM compiles: the model with its Linear weights laid out for a CPU.

Every Linear becomes `x @ W` with W stored (in, out) = (K, N), so the compiled matmul streams W
along N (contiguous, vectorisable) and no transpose is left in the graph; q, k, v are one matmul
and gate, up another (prepare), so a decode step launches 4 GEMVs a layer, not 7. The tied
embedding gathers columns of the lm_head's (C, V) matrix, so tied weights are stored once.

int8: per-output-channel symmetric int8 with one fp32 scale per column, dequantised inside the
graph (`Wq.float() * scale`); schedule.PackWeights calls dot.gemm8_dot on it where the target has a
dot.py kernel (int8 activations in blocks of 32, integer sums: llama.cpp's q8_0 x q8_0 with a
column's scale), else gemm.gemm (weight-only, fp32 activations). The compiled library embeds the
int8 tensors, so the artifact is about a quarter of fp32.

int4-b32 keeps the layers' Linears fp32 here: schedule.Int4Matmuls quantises each constant
weight of the Relax graph (`quantize_int4`) and calls gemm.gemm4 on it, so no int4 unpacking
runs as graph ops. The tied lm_head / embedding stays int8 per channel (llama.cpp's q4_0 also
keeps its output matrix wider). Runs in the TVM toolchain venv (torch only).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ...pipeline.model import apply_rope, rope_tables


def quantize_kn(w_kn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, N) fp32 -> (K, N) int8, (N,) fp32 scale; symmetric, one scale per output channel."""
    amax = w_kn.abs().amax(dim=0).clamp(min=1e-12)
    scale = amax / 127.0
    q = torch.round(w_kn / scale).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


INT4_BLOCK = 32  # weights along K sharing one scale (llama.cpp's q4_0 block)
FP16_TINY = 2.0 ** -14  # fp16's smallest normal: the least int4 scale (subnormals lose bits)
INT4_GROUP = 64  # columns a packed group: byte b of a row holds column b (low nibble) and b + 32 (high)


def quantize_int4(w_kn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, N) fp32 -> packed (K, N // 2) uint8, (K // 32, N) fp32 scale (each an fp16 value, at least
    fp16's smallest normal): symmetric int4 in blocks of 32 along K, stored q + 8 in a nibble.
    Byte g*32 + b of a row holds column g*64 + b in its low nibble and column g*64 + 32 + b in its
    high one: a vector of 32 bytes unpacks to 64 contiguous columns with one mask and one shift
    (gemm.gemm4)."""
    K, N = w_kn.shape
    if K % INT4_BLOCK or N % INT4_GROUP:
        raise ValueError(f"int4-b32 needs K % {INT4_BLOCK} == 0 and N % {INT4_GROUP} == 0, got ({K}, {N})")
    blocks = w_kn.reshape(K // INT4_BLOCK, INT4_BLOCK, N)
    # on the fp16 grid (dot.py stores it so, as llama.cpp's q4_0 does); GPTQ's snapped scales are on it
    scale = (blocks.abs().amax(dim=1) / 7.0).clamp(min=FP16_TINY).half().float()  # (K/32, N)
    q = torch.round(blocks / scale[:, None, :]).clamp(-8, 7).reshape(K, N).to(torch.int16) + 8  # 0..15
    g = q.reshape(K, N // INT4_GROUP, 2, INT4_GROUP // 2)  # (K, groups, low/high, 32)
    packed = (g[:, :, 0] | (g[:, :, 1] << 4)).to(torch.uint8).reshape(K, N // 2)
    return packed, scale.float()


def pack_int4(packed: torch.Tensor) -> torch.Tensor:
    """quantize_int4's (K, N // 2) bytes -> (N // 64, K, 32): each 64-column group's rows contiguous,
    the layout gemm.gemm4 reads (a decode task streams its group)."""
    K = packed.shape[0]
    return packed.reshape(K, -1, INT4_GROUP // 2).permute(1, 0, 2).contiguous()


def int4_codes(packed: torch.Tensor) -> torch.Tensor:
    """quantize_int4's (K, N // 2) bytes -> the (K, N) codes q + 8, 0..15 (int16)."""
    K = packed.shape[0]
    p = packed.to(torch.int16).reshape(K, -1, INT4_GROUP // 2)
    return torch.stack([p & 15, p >> 4], dim=2).reshape(K, -1)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The (K, N) fp32 matrix an int4-b32 kernel applies (for tests and parity)."""
    return (int4_codes(packed) - 8).float() * scale.repeat_interleave(INT4_BLOCK, dim=0)


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


class GateUp(nn.Module):
    """The MLP with gate and up as one (K, 2I) matmul: one GEMV a step where there were two."""

    def __init__(self, mlp: nn.Module, precision: str):
        super().__init__()
        self.gate_up = _fused([mlp.gate_proj, mlp.up_proj], precision)
        self.down_proj = mlp.down_proj

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(torch.nn.functional.silu(gate) * up)


def _fused(linears: list, precision: str) -> KNLinear:
    """One KNLinear whose columns are the linears' outputs side by side: per output column
    quantisation (int8's scale, int4's blocks along K), so each column is what it was alone."""
    bias = [lin.bias for lin in linears]
    return KNLinear(torch.cat([lin.weight for lin in linears]), precision,
                    None if bias[0] is None else torch.cat(bias))


def _fuse_projections(model, precision: str):
    """q, k, v as one matmul (attn.qkv) and gate, up as one (GateUp), in every distinct block:
    fewer, wider GEMVs a step (k and v alone are a single GEMV task on a 2-core board)."""
    for blk in {id(b): b for b in model.layers}.values():  # shared blocks: fused once
        attn = blk.self_attn
        attn.qkv = _fused([attn.q_proj, attn.k_proj, attn.v_proj], precision)
        del attn.q_proj, attn.k_proj, attn.v_proj
        blk.mlp = GateUp(blk.mlp, precision)


def prepare(model, precision: str):
    """The model with KN (fp32 or int8) linears, q/k/v and gate/up fused, in place; model must
    be eval and fp32. int4-b32: fp32 layer linears (quantised later, on the Relax graph), an int8 head."""
    if precision not in ("fp32", "int8", "int4-b32"):
        raise ValueError(f"unknown precision {precision!r}, have: fp32, int8, int4-b32")
    tied = model.cfg.tie_embeddings
    emb = model.embed_tokens.weight.detach()
    head = model.lm_head.weight
    layers = "fp32" if precision == "int4-b32" else precision
    _fuse_projections(model, layers)
    _swap_linears(model, layers, {})
    if precision == "int4-b32":
        model.lm_head = KNLinear(head, "int8")
    if tied:
        model.embed_tokens = TiedEmbedding(model.lm_head)
    elif precision != "fp32":  # untied: quantise the table per row (= per output channel)
        model.embed_tokens = TiedEmbedding(KNLinear(emb, "int8"))
    return model


# The cache layout of the exported graph, recorded in the manifest (runtime.py reads it): one K and
# one V tensor a layer of C >= P + T positions the runtime allocates (and grows), K stored transposed
# so the scores stream it along positions; the graph writes each step's keys and values into them at
# pos (a (1,) int64 input: the tokens cached before this call) and attends over their first P + T.
CACHE_LAYOUT = {"k": "(1,nkv,hd,C)", "v": "(1,nkv,C,hd)", "pos": "(1,) int64", "write": "in place"}


@torch.library.custom_op("litelm_edge::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              pos: torch.Tensor, g: int) -> torch.Tensor:
    """Causal attention over a cache written in place: k (1, nkv, hd, T) and v (1, nkv, T, hd) go
    into k_cache (1, nkv, hd, C) and v_cache (1, nkv, C, hd) at positions P..P+T-1 (P = pos[0]);
    q (nkv, T*g, hd), scaled, its rows (t, j) query t of the j-th q head of a K/V head, attends over
    the caches' first P + t + 1 positions -> y (nkv, T*g, hd). One op for the graph: TVM compiles it
    as cache.attention (one kernel that writes and attends, no copy of the cache). Declared
    non-mutating so torch.export keeps it one call the importer maps (cache.convert_map); the
    mutation is of the caches the runtime owns, which nothing in the graph reads again."""
    P, T = int(pos[0]), k.shape[3]
    k_cache[..., P:P + T] = k
    v_cache[:, :, P:P + T] = v
    att = q @ k_cache[0, :, :, :P + T]  # (nkv, T*g, P+T)
    t = torch.arange(T * g, device=q.device) // g + P  # each row's position
    att = att.masked_fill(torch.arange(P + T, device=q.device)[None, :] > t[:, None], float("-inf"))
    return torch.softmax(att, dim=-1) @ v_cache[0, :, :P + T]


@attention.register_fake
def _attention_shape(q, k, v, k_cache, v_cache, pos, g):
    return torch.empty_like(q)


class CachedForward(nn.Module):
    """forward(idx (1, T), pos (1,) int64, k_0..k_{L-1} (1, nkv, hd, C), v_0..v_{L-1} (1, nkv, C, hd))
    -> logits (1, T, V); each layer's keys and values written into its caches at pos..pos+T-1
    (C >= pos + T: the caller's cache, grown by the caller).

    The model's forward_cached with its own attention, written for TVM: per-layer caches written in
    place (no torch.stack copy of every layer, no concat of the past each step); grouped-query
    attention as the group's q heads stacked along rows, (nkv, T*group, hd), against their one K/V
    head (no repeat of K/V); the 1/sqrt(hd) scale folded into q; the causal mask inside `attention`.
    last: the logits of the last position only, (1, 1, V): what serving needs of a prefill
    (llama.cpp computes no more); the head is then one GEMV, not T of them."""

    def __init__(self, model, last: bool = False):
        super().__init__()
        self.model, self.last = model, last

    def forward(self, idx, pos, *caches):
        m, c = self.model, self.model.cfg
        L = c.n_layer
        ks, vs = caches[:L], caches[L:]
        C = vs[0].shape[2]
        for kc, vc in zip(ks, vs, strict=True):  # one symbol C for every cache (export made one each)
            torch._check(kc.shape[3] == C)
            torch._check(vc.shape[2] == C)
        cos, sin = rope_tables(c, pos, idx.shape[1], idx.device)  # positions pos..pos+T-1
        x = m.embed_tokens(idx)
        for i, li in enumerate(m.layer_order()):
            blk = m.layers[li]
            x = x + self.attend(blk.self_attn, blk.input_layernorm(x), cos, sin, ks[i], vs[i], pos)
            x = x + blk.mlp(blk.post_attention_layernorm(x))
        if self.last:
            x = x[:, -1:]
        return m.lm_head(m.norm(x))

    def attend(self, attn, x, cos, sin, k_cache, v_cache, pos):
        """x (1, T, C) -> y (1, T, C); the layer's keys and values written into its caches."""
        c = self.model.cfg
        T, hd, nh, nkv = x.shape[1], c.head_dim, c.n_head, c.n_kv_head
        g = nh // nkv  # q heads a K/V head: q head h reads K/V head h // g (Attention's expand)
        cos, sin = cos[:, None], sin[:, None]  # (T, 1, hd): over heads
        if hasattr(attn, "qkv"):  # prepare's fused projections
            q, k, v = attn.qkv(x).split([nh * hd, nkv * hd, nkv * hd], dim=-1)
        else:  # the model as it was trained (tests compare the two)
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q = apply_rope(q.reshape(1, T, nh, hd), cos, sin) * (1.0 / math.sqrt(hd))
        k = apply_rope(k.reshape(1, T, nkv, hd), cos, sin).permute(0, 2, 3, 1)  # (1, nkv, hd, T)
        v = v.reshape(1, T, nkv, hd).transpose(1, 2)  # (1, nkv, T, hd)
        # rows (t, j) of K/V head n: query t of q head n*g + j. The rows split as (T, g), g static:
        # torch.export cannot prove a split of a symbolic dim as (g, T) valid. Every reshape changes
        # the rank: TVM's importer compares same-rank shapes element by element, and fails on T.
        q = q.view(1, T, nkv, g, hd).transpose(1, 2).reshape(nkv, T * g, hd)
        y = attention(q, k, v, k_cache, v_cache, pos, g)  # (nkv, T*g, hd)
        y = y.view(nkv, T, g, hd).transpose(0, 1).reshape(1, T, nh * hd)
        if attn.g_proj is not None:
            y = y * torch.sigmoid(attn.g_proj(x))
        return attn.o_proj(y)


def empty_caches(cfg, capacity: int) -> list[torch.Tensor]:
    """CachedForward's caches for `capacity` positions: k_0..k_{L-1}, then v_0..v_{L-1}."""
    L, nkv, hd = cfg.n_layer, cfg.n_kv_head, cfg.head_dim
    return ([torch.zeros(1, nkv, hd, capacity) for _ in range(L)]
            + [torch.zeros(1, nkv, capacity, hd) for _ in range(L)])


def export(model, last: bool = False):
    """torch.export with dynamic T (new tokens) and C (cache capacity); pos is data: one graph
    serves prefill (pos 0) and decode (T = 1) at any cache size. last: CachedForward's."""
    c = model.cfg
    T = torch.export.Dim("T", min=1, max=c.max_seq_len)
    C = torch.export.Dim("C", min=2)
    idx, pos = torch.zeros((1, 8), dtype=torch.int64), torch.zeros((1,), dtype=torch.int64)
    caches = ({3: C},) * c.n_layer + ({2: C},) * c.n_layer
    with torch.no_grad():
        return torch.export.export(CachedForward(model, last).eval(), (idx, pos, *empty_caches(c, 16)),
                                   dynamic_shapes=({1: T}, None, caches))
