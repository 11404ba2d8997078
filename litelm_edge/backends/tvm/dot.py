"""int4 GEMV with integer dot products (llama.cpp's q4_0 x q8_0), for CPUs that have them.

gemm.gemm4 widens every weight to fp32 and multiplies it by an fp32 activation: on a core with a
wide memory path that is compute-bound (26M shape, alone, AMD EPYC Zen 5: 1.6x the int8 GEMV's time
for half its bytes). Here a decode step quantizes the activation row to int8 in blocks of 32 (one
fp32 scale a block, as llama.cpp's q8_0), and each 4 weights x 4 activations are one lane of an
integer dot product: AVX-512 VNNI's `vpdpbusd` (unsigned 8-bit x signed 8-bit, 64 products an
instruction). The weights are stored q + 8 (0..15), so each block's sum over k of (q + 8) a is
corrected by 8 sum(a) before its scales apply: sum_b sa_b S_bj (dot_bj - 8 sum_k a_k).

Layout (pack): for each 64-column group and each 4 rows k, 128 bytes = 2 vectors of 16 lanes of 4
bytes; lane j of half z holds, in byte t, row 4kq + t of column 32z + j (low nibble) and of column
32z + 16 + j (high nibble). One mask and one shift give two vectors of 16 columns x 4 rows.
Prefill (M > 1) dequantizes each task's K x NJ slab from the same bytes, then runs gemm4's tile
(gemm.slab_tile), on fp32 activations.
A target without AVX-512 VNNI keeps gemm.gemm4 (`available`). Runs in the TVM toolchain venv.
"""
from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from litelm_edge.backends.tvm.gemm import slab_tile

B = 32  # activation and weight block along K
L = 16  # 32-bit lanes of a 512-bit vector


def available(target, tile) -> bool:
    """The target has AVX-512 VNNI and the prefill tile is 16 or 32 columns wide."""
    from tvm.target import codegen
    return ("x86" in str(target.attrs.get("mtriple", "")) and tile[1] in (L, 2 * L)
            and bool(codegen.target_has_features("avx512vnni", target)))


def pack(u: np.ndarray) -> np.ndarray:
    """(K, N) codes q + 8 in 0..15 -> (N / 64, K / 4, 128) uint8, the layout above."""
    K, N = u.shape
    v = u.astype(np.uint8).reshape(K // 4, 4, N // 64, 2, 2, L)  # (kq, t, group, half z, lo/hi, j)
    b = v[:, :, :, :, 0] | (v[:, :, :, :, 1] << 4)  # (kq, t, group, z, j)
    return np.ascontiguousarray(b.transpose(2, 0, 3, 4, 1)).reshape(N // 64, K // 4, 8 * L)


def _slab_codes(W, j0, k, h):
    """The int4 codes - 8 of row k, columns j0 + 16 h + 0..15 (j0 a multiple of the tile's 16 or 32),
    as a float32x16: the 16 lanes of their half, shifted to row k's byte and the columns' nibble."""
    lanes = T.reinterpret("int32x16", W[j0 // 64, k // 4, T.ramp(j0 % 64 // 32 * 4 * L, 1, 4 * L)])
    shift = T.Cast("int32", k % 4 * 8 + (j0 % 32 // L + h) * 4)
    code = T.bitwise_and(T.shift_right(lanes, T.broadcast(shift, L)), T.broadcast(15, L))
    return T.Cast("float32x16", code) - T.broadcast(T.float32(8), L)


def _quantize_row(K):
    """A macro: A's first row to int8 in blocks of 32 (scale amax / 127), 4 a 32-bit lane of aq;
    sa the blocks' scales, corr 8 x the sum of each block's int8 values (the weights' offset)."""
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
            for q4 in range(B // 4):
                word = T.decl_buffer((1,), "int32", scope="local")
                word[0] = 0
                for t in range(4):
                    qv = T.Cast("int32", T.round(A[0, kb * B + q4 * 4 + t] * inv))
                    tot[0] = tot[0] + qv
                    word[0] = T.bitwise_or(word[0], T.shift_left(T.bitwise_and(qv, 255), t * 8))
                aq[kb * (B // 4) + q4] = word[0]
            corr[kb] = tot[0] * 8

    return body


def _dot(acc_i32, wq, x):
    """vpdpbusd: each 32-bit lane of acc_i32 += the 4 products of wq's unsigned bytes and x's signed ones."""
    return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", acc_i32,
                                   T.reinterpret("int8x64", wq), T.reinterpret("int8x64", x))


def gemm4_dot(K: int, N: int, tile) -> tirx.PrimFunc:
    """(A (M, K), W (N/64, K/4, 128) uint8, S (K/32, N), C (M, N)): gemm.gemm4's signature and sums."""
    nj = tile[1]
    tile_ = slab_tile(tirx.IntImm("int64", K), tile)
    quantize = _quantize_row(tirx.IntImm("int64", K))
    K, N = tirx.IntImm("int64", K), tirx.IntImm("int64", N)
    KB, G, Q = K // B, N // 64, B // 4  # blocks, column groups, 4-row steps a block

    @T.prim_func(private=True, s_tir=False)
    def main(a: T.handle, w: T.handle, s: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        M = T.int64()
        A = T.match_buffer(a, (M, K), "float32")
        W = T.match_buffer(w, (G, K // 4, 8 * L), "uint8")
        S = T.match_buffer(s, (KB, N), "float32")
        C = T.match_buffer(c, (M, N), "float32")
        if M == 1:
            aq = T.decl_buffer((K // 4,), "int32", scope="global")
            sa = T.decl_buffer((KB,), "float32", scope="global")
            corr = T.decl_buffer((KB,), "int32", scope="global")
            quantize(A, aq, sa, corr)
            for g in T.parallel(G):
                acc = T.decl_buffer((64,), "float32", scope="local")
                for ji in T.vectorized(64):
                    acc[ji] = T.float32(0)
                for kb in range(KB):
                    dot = T.decl_buffer((64,), "int32", scope="local")  # columns 0-15, 16-31 | 32-47, 48-63
                    for ji in T.vectorized(64):
                        dot[ji] = 0
                    for q4 in range(Q):
                        for z in T.unroll(2):
                            v = T.reinterpret("int32x16", W[g, kb * Q + q4, T.ramp(z * 4 * L, 1, 4 * L)])
                            x = T.broadcast(aq[kb * Q + q4], L)
                            for hi in T.unroll(2):
                                at = T.ramp(z * 32 + hi * L, 1, L)
                                nib = T.bitwise_and(T.shift_right(v, T.broadcast(hi * 4, L)),
                                                    T.broadcast(0x0F0F0F0F, L))
                                dot[at] = _dot(dot[at], nib, x)
                    for ji in T.vectorized(64):
                        acc[ji] = acc[ji] + (T.Cast("float32", dot[ji] - corr[kb])  # no Let in a vector loop:
                                             * (sa[kb] * S[kb, g * 64 + ji]))  # TVM 0.27 miscompiles it
                for ji in T.vectorized(64):
                    C[0, g * 64 + ji] = acc[ji]
        else:
            for jo in T.parallel(N // nj):
                wd = T.decl_buffer((K, nj), "float32", scope="global")  # the task's slab, dequantized
                for k in range(K):  # nj 16 or 32 columns: one or both nibbles of 16 lanes
                    for h in T.unroll(nj // L):
                        wd[k, T.ramp(h * L, 1, L)] = (_slab_codes(W, jo * nj, k, h)
                                                      * S[k // B, T.ramp(jo * nj + h * L, 1, L)])
                tile_(A, C, wd, M, jo)
    return main
