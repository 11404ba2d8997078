"""int4 GEMV with integer dot products (llama.cpp's q4_0 x q8_0): AVX-512 VNNI on x86, NEON on aarch64.

gemm.gemm4 widens every weight to fp32 and multiplies it by an fp32 activation: on a core with a
wide memory path that is compute-bound (26M shape, alone, AMD EPYC Zen 5: 1.6x the int8 GEMV's time
for half its bytes). Here a decode step quantizes the activation row to int8 in blocks of 32 (one
fp32 scale a block, as llama.cpp's q8_0), and each 4 weights x 4 activations are one lane of an
integer dot product. Two kernels, one a target (`kind`), the same sums:

- "vnni" (x86 with AVX-512 VNNI): `vpdpbusd`, unsigned 8-bit x signed 8-bit, 64 products an
  instruction. The weights are stored q + 8 (0..15), so each block's sum of (q + 8) a is corrected
  by 8 sum(a): sum_b sa_b S_bj (dot_bj - 8 sum_k a_k). Layout (pack_vnni): for each 64-column group
  and each 4 rows, 128 bytes = 2 vectors of 16 lanes of 4 bytes; lane j of half z holds, in byte t,
  row 4kq + t of column 32z + j (low nibble) and of column 32z + 16 + j (high nibble): one mask and
  one shift give two vectors of 16 columns x 4 rows.
- "neon" (aarch64; the Pi 4's Cortex-A72 has no `sdot`): a column's block of 32 is 16 bytes of
  signed nibbles (rows 0-15 low, 16-31 high; pack_neon), sign-extended by two shifts, multiplied by
  the int8 activations into 16-bit sums (`smull` / `smlal`: |q a| <= 8 x 127, 32 of them fit), widened
  and added across (`saddl`, `addv`): llama.cpp's q4_0 x q8_0 without dot-product instructions.
  LLVM picks those instructions from plain TIR (sign-extend, multiply, reduce): checked in its
  aarch64 assembly; 22 instructions a 32 weights where gemm4's fp32 widening takes 48.

Prefill (M > 1) dequantizes each task's K x NJ slab from the same bytes, then runs gemm4's tile
(gemm.slab_tile) on fp32 activations. Any other target keeps gemm.gemm4. Runs in the TVM venv.
"""
from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from litelm_edge.backends.tvm.gemm import slab_tile

B = 32  # activation and weight block along K
L = 16  # 32-bit lanes of a 512-bit vector; bytes of a 128-bit one


def kind(target, tile) -> str | None:
    """"vnni", "neon" or None (gemm.gemm4) for this target; the prefill tile must be 16 or 32 wide."""
    from tvm.target import codegen
    triple = str(target.attrs.get("mtriple", ""))
    if tile[1] not in (L, 2 * L):
        return None
    if "x86" in triple and codegen.target_has_features("avx512vnni", target):
        return "vnni"
    if "aarch64" in triple and codegen.target_has_features("neon", target):
        return "neon"
    return None


def pack(codes: np.ndarray, how: str) -> np.ndarray:
    """(K, N) codes q + 8 in 0..15 -> the layout of `how` (see above)."""
    K, N = codes.shape
    if how == "vnni":  # (N / 64, K / 4, 128) uint8
        v = codes.astype(np.uint8).reshape(K // 4, 4, N // 64, 2, 2, L)  # (kq, t, group, half z, lo/hi, j)
        b = v[:, :, :, :, 0] | (v[:, :, :, :, 1] << 4)  # (kq, t, group, z, j)
        return np.ascontiguousarray(b.transpose(2, 0, 3, 4, 1)).reshape(N // 64, K // 4, 8 * L)
    q = (codes.astype(np.int16) - 8).astype(np.uint8).T.reshape(N, K // B, 2, L) & 15  # (N, block, half, 16)
    return np.ascontiguousarray(q[:, :, 0] | (q[:, :, 1] << 4)).view(np.int8)  # (N, K / 32, 16) int8


def _quantize_row(K):
    """A macro: A's first row to int8 aq in blocks of 32 (scale amax / 127, sa); corr 8 x the sum of
    each block's int8 values (vnni's offset)."""
    @T.macro
    def body(A, aq, sa, corr):
        for kb in range(K // B):
            amax = T.decl_buffer((1,), "float32", scope="local")
            amax[0] = T.float32(0)
            for i in range(B):
                amax[0] = T.max(amax[0], T.fabs(A[0, kb * B + i]))
            sa[kb] = amax[0] / T.float32(127)
            inv = T.if_then_else(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))
            tot = T.decl_buffer((1,), "int32", scope="local")
            tot[0] = 0
            for i in range(B):
                qv = T.Cast("int32", T.round(A[0, kb * B + i] * inv))
                tot[0] = tot[0] + qv
                aq[kb * B + i] = T.Cast("int8", qv)
            corr[kb] = tot[0] * 8

    return body


@T.macro
def _vnni(W, g, kb, aq, dot):
    """dot (64 columns of group g, int32) += block kb's 32 rows, 4 a vpdpbusd lane."""
    for q4 in range(B // 4):
        for z in T.unroll(2):
            v = T.reinterpret("int32x16", W[g, kb * (B // 4) + q4, T.ramp(z * 4 * L, 1, 4 * L)])
            x = T.broadcast(T.reinterpret("int32", aq[T.ramp((kb * (B // 4) + q4) * 4, 1, 4)]), L)
            for hi in T.unroll(2):
                at = T.ramp(z * 32 + hi * L, 1, L)
                nib = T.bitwise_and(T.shift_right(v, T.broadcast(hi * 4, L)), T.broadcast(0x0F0F0F0F, L))
                dot[at] = T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", dot[at],
                                                  T.reinterpret("int8x64", nib), T.reinterpret("int8x64", x))


def _neon_block(W, col, kb, aq):
    """Column col's block kb: sum of its 32 signed int4 weights times the int8 activations, int32."""
    v = W[col, kb, T.ramp(0, 1, L)]
    four = T.broadcast(T.int8(4), L)
    lo, hi = T.shift_right(T.shift_left(v, four), four), T.shift_right(v, four)  # sign-extended nibbles
    p = (T.Cast("int16x16", lo) * T.Cast("int16x16", aq[T.ramp(kb * B, 1, L)])
         + T.Cast("int16x16", hi) * T.Cast("int16x16", aq[T.ramp(kb * B + L, 1, L)]))
    return T.call_llvm_pure_intrin("int32", "llvm.vector.reduce.add.v16i32", T.Cast("int32x16", p))


def _vnni_codes(W, j0, k, h):
    """vnni: the codes - 8 of row k, columns j0 + 16 h + 0..15 (j0 a multiple of 16), float32x16."""
    lanes = T.reinterpret("int32x16", W[j0 // 64, k // 4, T.ramp(j0 % 64 // 32 * 4 * L, 1, 4 * L)])
    shift = T.Cast("int32", k % 4 * 8 + (j0 % 32 // L + h) * 4)
    code = T.bitwise_and(T.shift_right(lanes, T.broadcast(shift, L)), T.broadcast(15, L))
    return T.Cast("float32x16", code) - T.broadcast(T.float32(8), L)


def _neon_code(W, col, k):
    """neon: the signed code of row k, column col, float32."""
    left = T.Cast("int8", (1 - k % B // L) * 4)  # the low nibble (rows 0-15) shifted up first
    return T.Cast("float32", T.shift_right(T.shift_left(W[col, k // B, k % L], left), T.int8(4)))


@T.macro
def _decode_vnni(W, S, C, aq, sa, corr, G, KB):
    for g in T.parallel(G):
        acc = T.decl_buffer((64,), "float32", scope="local")
        for ji in T.vectorized(64):
            acc[ji] = T.float32(0)
        for kb in range(KB):
            dot = T.decl_buffer((64,), "int32", scope="local")  # columns 0-15, 16-31 | 32-47, 48-63
            for ji in T.vectorized(64):
                dot[ji] = 0
            _vnni(W, g, kb, aq, dot)
            for ji in T.vectorized(64):
                acc[ji] = acc[ji] + (T.Cast("float32", dot[ji] - corr[kb])  # no Let in a vector loop:
                                     * (sa[kb] * S[kb, g * 64 + ji]))  # TVM 0.27 miscompiles it
        for ji in T.vectorized(64):
            C[0, g * 64 + ji] = acc[ji]


@T.macro
def _decode_neon(W, S, C, aq, sa, corr, G, KB):
    for g in T.parallel(G):
        for j in range(64):
            acc = T.decl_buffer((1,), "float32", scope="local")
            acc[0] = T.float32(0)
            for kb in range(KB):
                acc[0] = acc[0] + (T.Cast("float32", _neon_block(W, g * 64 + j, kb, aq))
                                   * (sa[kb] * S[kb, g * 64 + j]))
            C[0, g * 64 + j] = acc[0]


@T.macro
def _slab_vnni(W, S, wd, jo, nj, K):
    for k in range(K):  # nj 16 or 32 columns: one or both nibbles of 16 lanes
        for h in T.unroll(nj // L):
            wd[k, T.ramp(h * L, 1, L)] = (_vnni_codes(W, jo * nj, k, h)
                                          * S[k // B, T.ramp(jo * nj + h * L, 1, L)])


@T.macro
def _slab_neon(W, S, wd, jo, nj, K):
    for k in range(K):
        for ji in T.vectorized(nj):
            wd[k, ji] = _neon_code(W, jo * nj + ji, k) * S[k // B, jo * nj + ji]


def gemm4_dot(K: int, N: int, tile, how: str) -> tirx.PrimFunc:
    """(A (M, K), W (`how`'s layout), S (K/32, N), C (M, N)): gemm.gemm4's signature and sums, decode on
    int8 activations."""
    nj = tile[1]
    tile_, quantize = slab_tile(tirx.IntImm("int64", K), tile), _quantize_row(tirx.IntImm("int64", K))
    K, N = tirx.IntImm("int64", K), tirx.IntImm("int64", N)
    KB, G = K // B, N // 64
    wshape, wdtype = ((G, K // 4, 8 * L), "uint8") if how == "vnni" else ((N, KB, L), "int8")
    decode, slab = (_decode_vnni, _slab_vnni) if how == "vnni" else (_decode_neon, _slab_neon)

    @T.prim_func(private=True, s_tir=False)
    def main(a: T.handle, w: T.handle, s: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        M = T.int64()
        A = T.match_buffer(a, (M, K), "float32")
        W = T.match_buffer(w, wshape, wdtype)
        S = T.match_buffer(s, (KB, N), "float32")
        C = T.match_buffer(c, (M, N), "float32")
        if M == 1:
            aq = T.decl_buffer((K,), "int8", scope="global")
            sa = T.decl_buffer((KB,), "float32", scope="global")
            corr = T.decl_buffer((KB,), "int32", scope="global")
            quantize(A, aq, sa, corr)
            decode(W, S, C, aq, sa, corr, G, KB)
        else:
            for jo in T.parallel(N // nj):
                wd = T.decl_buffer((K, nj), "float32", scope="global")  # the task's slab, dequantized
                slab(W, S, wd, jo, nj, K)
                tile_(A, wd, S, C, M, jo)
    return main
