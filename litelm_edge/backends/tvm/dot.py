"""int4 and int8 GEMV and GEMM on integer dot products (llama.cpp's q4_0 / q8_0 x q8_0): AVX-512 VNNI
or AVX2, NEON. int8 (gemm8_dot, pack8: per-channel weights, one scale a column applied to the finished
sum) runs the int4 loops below on bytes instead of nibbles; vnni stores q + 128 (the correction 128 x
the block sum), avx2 the signed q with llama.cpp's sign trick (vpabsb, vpsignb: |w| x 127 x 2 fits
vpmaddubsw's 16 bits, 255 x 127 x 2 would not), neon sums two products a 16-bit lane.

gemm.gemm4 widens every weight to fp32 and multiplies it by an fp32 activation: on a core with a
wide memory path that is compute-bound (26M shape, alone, AMD EPYC Zen 5: 1.6x the int8 GEMV's time
for half its bytes). Here a decode step quantizes the activation row to int8 in blocks of 32 (one
fp32 scale a block, as llama.cpp's q8_0), and each 4 weights x 4 activations are one lane of an
integer dot product. Three kernels, one a target (`kind`), the same sums:

- "vnni" (x86 with AVX-512 VNNI): `vpdpbusd`, unsigned 8-bit x signed 8-bit, 64 products an
  instruction. The weights are stored q + 8 (0..15), so each block's sum of (q + 8) a is corrected
  by 8 sum(a): sum_b sa_b S_bj (dot_bj - 8 sum_k a_k). Layout (pack_vnni): for each 64-column group
  and each 4 rows, 128 bytes = 2 vectors of 16 lanes of 4 bytes; lane j of half z holds, in byte t,
  row 4kq + t of column 32z + j (low nibble) and of column 32z + 16 + j (high nibble): one mask and
  one shift give two vectors of 16 columns x 4 rows.
- "avx2" (x86 without VNNI: AVX2 only, e.g. AMD Zen 3): vnni's layout and loops, each `vpdpbusd` done
  as llama.cpp's AVX2 q4_0 x q8_0 does it, `vpmaddubsw` (u8 x s8 -> pairs summed to 16 bits: |15 x 127
  x 2| fits) then `vpmaddwd` by ones (pairs summed to 32 bits), on two 256-bit halves.
- "neon" (aarch64; the Pi 4's Cortex-A72 has no `sdot`): a column's block of 32 is 16 bytes of
  signed nibbles (rows 0-15 low, 16-31 high; pack_neon), sign-extended by two shifts, multiplied by
  the int8 activations into 16-bit sums (`smull` / `smlal`: |q a| <= 8 x 127, 32 of them fit), widened
  and added across (`saddl`, `addv`): llama.cpp's q4_0 x q8_0 without dot-product instructions.
  LLVM picks those instructions from plain TIR (sign-extend, multiply, reduce): checked in its
  aarch64 assembly; 22 instructions a 32 weights where gemm4's fp32 widening takes 48.

Prefill (M > 1): "vnni" / "avx2" quantize every row as decode does and run the same integer sums in
a register tile of PREFILL rows x 64 columns (avx2: 1 row; AVX2 has 16 registers, not 32). vnni's
is 1.9-2.5x the speed of the fp32 slab it replaced (26M shapes, M = 64, alone); avx2's, in the 26M
model on an AVX2-only EPYC, 1.8x gemm4's in decode and prefill alike. "neon" dequantizes each task's
K x NJ slab from its bytes and runs gemm4's tile on fp32 activations (gemm.slab_prefill, gemm4's
own). Any other target keeps gemm.gemm4. The scales are fp16, packed per 64-column group
(pack_scales). Runs in the TVM venv.
"""
from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from litelm_edge.backends.tvm.gemm import slab_prefill

B = 32  # activation and weight block along K
X86 = ("vnni", "avx2")  # the kernels of pack_vnni's layout
L = 16  # 32-bit lanes of a 512-bit vector; bytes of a 128-bit one
PREFILL = 3  # vnni prefill: rows x 64 columns a register tile; 12 int32 sums and 12 fp32 accumulators
             # of AVX-512's 32 registers (AMD EPYC Zen 5, 26M shapes, M = 64, alone: within 5 % of
             # 4, 6 and 8 rows x 32 columns and of 2 rows x 64)


def kind(target, tile) -> str | None:
    """"vnni", "avx2", "neon" or None (gemm.gemm4) for this target; the prefill tile must be 16 or 32 wide."""
    from tvm.target import codegen
    triple = str(target.attrs.get("mtriple", ""))
    if tile[1] not in (L, 2 * L):
        return None
    if "x86" in triple and codegen.target_has_features("avx512vnni", target):
        return "vnni"
    if "x86" in triple and codegen.target_has_features("avx2", target):
        return "avx2"
    if "aarch64" in triple and codegen.target_has_features("neon", target):
        return "neon"
    return None


def pack_scales(scale: np.ndarray) -> np.ndarray:
    """(K / 32, N) scales (fp16 values: graph.quantize_int4) -> (N / 64, K / 32, 64) float16: a task's
    64 columns read their scales in one stream, at half the bytes (0.5 bit a weight, q4_0's)."""
    KB, N = scale.shape
    return np.ascontiguousarray(scale.reshape(KB, N // 64, 64).transpose(1, 0, 2)).astype(np.float16)


def pack(codes: np.ndarray, how: str) -> np.ndarray:
    """(K, N) codes q + 8 in 0..15 -> the layout of `how` (see above)."""
    K, N = codes.shape
    if how in X86:  # (N / 64, K / 4, 128) uint8
        v = codes.astype(np.uint8).reshape(K // 4, 4, N // 64, 2, 2, L)  # (kq, t, group, half z, lo/hi, j)
        b = v[:, :, :, :, 0] | (v[:, :, :, :, 1] << 4)  # (kq, t, group, z, j)
        return np.ascontiguousarray(b.transpose(2, 0, 3, 4, 1)).reshape(N // 64, K // 4, 8 * L)
    q = (codes.astype(np.int16) - 8).astype(np.uint8).T.reshape(N, K // B, 2, L) & 15  # (N, block, half, 16)
    return np.ascontiguousarray(q[:, :, 0] | (q[:, :, 1] << 4)).view(np.int8)  # (N, K / 32, 16) int8


def pack8(q: np.ndarray, how: str) -> np.ndarray:
    """(K, N) int8 codes (graph.quantize_kn's, one scale a column) -> gemm8_dot's layout, int8:
    x86 (N / 64, K / 4, 256): for each 64-column group and 4 rows, 4 vectors of 16 lanes of 4 bytes,
    lane j of vector v holding rows 4 kq .. 4 kq + 3 of column 16 v + j ("vnni" stores q + 128, the
    unsigned operand of vpdpbusd, as q ^ 0x80; "avx2" q); "neon" (N, K): a column's codes contiguous."""
    K, N = q.shape
    if how in X86:
        v = q.astype(np.int8).reshape(K // 4, 4, N // 64, 4, L)  # (kq, t, group, v, j)
        b = np.ascontiguousarray(v.transpose(2, 0, 3, 4, 1)).reshape(N // 64, K // 4, 16 * L)
        return (b.view(np.uint8) ^ 0x80).view(np.int8) if how == "vnni" else b
    return np.ascontiguousarray(q.T.astype(np.int8))


def gather8(K: int, N: int, how: str) -> tirx.PrimFunc:
    """out (K, n) int8 = W[:, idx] of a (K, N) matrix in pack8's layout: the tied embedding's columns,
    read from the head's one copy (gemm.gather_packed's, for gemm8_dot's head)."""
    K, N = tirx.IntImm("int64", K), tirx.IntImm("int64", N)
    shape = (N // 64, K // 4, 16 * L) if how in X86 else (N, K)
    flip = T.int8(-128 if how == "vnni" else 0)  # vnni's q + 128 back to q

    def code(W, n, k):
        if how in X86:
            return T.bitwise_xor(W[n // 64, k // 4, n % 64 // L * 4 * L + n % L * 4 + k % 4], flip)
        return W[n, k]

    @T.prim_func(private=True, s_tir=False)
    def main(w: T.handle, i: T.handle, o: T.handle):
        # opaque (cache.OPAQUE): FuseOps leaves it alone (FuseTIR refuses its buffers in a group)
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        n = T.int64()
        W = T.match_buffer(w, shape, "int8")
        Idx = T.match_buffer(i, (n,), "int64")
        O = T.match_buffer(o, (K, n), "int8")
        for t in range(n):
            for k in range(K):
                O[k, t] = code(W, Idx[t], k)

    return main


def _quantize_row(K, offset=8):
    """A macro: A's row i to int8 aq[i] in blocks of 32 (scale amax / 127, sa[i]); corr[i] `offset` x
    the sum of each block's int8 values (the weights' offset in vnni's unsigned operand)."""
    @T.macro
    def body(A, aq, sa, corr, i):
        for kb in range(K // B):
            amax = T.decl_buffer((1,), "float32", scope="local")
            amax[0] = T.float32(0)
            for k in range(B):
                amax[0] = T.max(amax[0], T.fabs(A[i, kb * B + k]))
            sa[i, kb] = amax[0] / T.float32(127)
            inv = T.if_then_else(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))
            tot = T.decl_buffer((1,), "int32", scope="local")
            tot[0] = 0
            for k in range(B):
                qv = T.Cast("int32", T.round(A[i, kb * B + k] * inv))
                tot[0] = tot[0] + qv
                aq[i, kb * B + k] = T.Cast("int8", qv)
            corr[i, kb] = tot[0] * offset

    return body


def _dot4(how, acc, u8, s8):
    """acc (int32x16) + the sums of each lane's 4 products u8 x s8 (int32x16 holding 64 bytes each):
    vpdpbusd, or on AVX2 vpmaddubsw then vpmaddwd by ones, a 256-bit half at a time."""
    if how == "vnni":
        return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", acc,
                                       T.reinterpret("int8x64", u8), T.reinterpret("int8x64", s8))
    return _avx2_dot4(acc, u8, s8, lambda u, s: (u, s))


def _dot4_signed(acc, w, a):
    """avx2, int8 weights: acc + each lane's 4 products w x a, both signed: llama.cpp's sign trick,
    |w| (vpabsb) times a with w's sign (vpsignb), so vpmaddubsw's pairs fit (127 x 127 x 2 < 2^15)."""
    def signed(w, a):
        return (T.max(w, T.broadcast(T.int8(0), 32) - w),
                T.call_llvm_pure_intrin("int8x32", "llvm.x86.avx2.psign.b", a, w))
    return _avx2_dot4(acc, w, a, signed)


def _avx2_dot4(acc, x, y, operands):
    """acc + vpmaddwd(vpmaddubsw(u, s), 1) of each 256-bit half of x and y (int32x16), u and s
    = operands(x half, y half) as int8x32."""
    halves = []
    for h in range(2):
        lanes = [tirx.IntImm("int32", h * 8 + i) for i in range(8)]
        half = [T.reinterpret("int8x32", tirx.Shuffle([v], lanes)) for v in (x, y)]
        pairs = T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", *operands(*half))
        halves.append(T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs,
                                              T.broadcast(T.int16(1), 16)))
    return acc + tirx.Shuffle(halves, [tirx.IntImm("int32", i) for i in range(16)])


def _weights(W, g, kq, z, hi, bits):
    """int32x16: 16 columns (32 z + 16 hi + j) x rows 4 kq .. 4 kq + 3 of group g, a byte each: int4's
    nibbles (pack), or int8's bytes (pack8)."""
    if bits == 8:
        return T.reinterpret("int32x16", W[g, kq, T.ramp((2 * z + hi) * 4 * L, 1, 4 * L)])
    v = T.reinterpret("int32x16", W[g, kq, T.ramp(z * 4 * L, 1, 4 * L)])
    return T.bitwise_and(T.shift_right(v, T.broadcast(hi * 4, L)), T.broadcast(0x0F0F0F0F, L))


def _scales(bits):
    """(block, column): what a block's integer sum of column j is scaled by beside its activation
    scale, block(S, g, kb, j) (int4: the block's weight scale S[g, kb, j], pack_scales), and what the
    finished sum is, column(S, g, j) (int8: the column's weight scale S[64 g + j]); 1 where none."""
    if bits == 8:
        return (lambda S, g, kb, j: T.float32(1)), (lambda S, g, j: S[g * 64 + j])
    return (lambda S, g, kb, j: T.Cast("float32", S[g, kb, j])), (lambda S, g, j: T.float32(1))


def _vnni_rows(K, mt, how="vnni", bits=4):
    """A macro: C rows i0 .. i0 + mt - 1, the 64 columns of group g, from the int8 rows aq; each 4 rows
    of a block one vpdpbusd lane (_dot4), a weight vector (a half: 2 x 16 columns) 2 mt of them.
    bits 4: S the blocks' scales (pack_scales); 8: S (N,) the columns', applied to the finished sum."""
    KB, w = K // B, 4 * L
    dot4 = _dot4_signed if bits == 8 and how == "avx2" else lambda acc, u, s: _dot4(how, acc, u, s)
    block, column = _scales(bits)

    @T.macro
    def body(W, S, C, aq, sa, corr, g, i0):
        acc = T.decl_buffer((mt, w), "float32", scope="local")
        for ii in T.unroll(mt):
            for ji in T.vectorized(w):
                acc[ii, ji] = T.float32(0)
        for kb in range(KB):
            dot = T.decl_buffer((mt, w), "int32", scope="local")  # per half: columns 0-15 | 16-31
            for ii in T.unroll(mt):
                for ji in T.vectorized(w):
                    dot[ii, ji] = 0
            for q4 in range(B // 4):
                for z in T.unroll(2):
                    for hi in T.unroll(2):
                        for ii in T.unroll(mt):
                            x = T.broadcast(T.reinterpret(
                                "int32", aq[i0 + ii, T.ramp((kb * (B // 4) + q4) * 4, 1, 4)]), L)
                            at = T.ramp(z * 2 * L + hi * L, 1, L)
                            wv = _weights(W, g, kb * (B // 4) + q4, z, hi, bits)
                            dot[ii, at] = dot4(dot[ii, at], wv, x)
            for ii in T.unroll(mt):
                for ji in T.vectorized(w):  # no Let in a vector loop: TVM 0.27 miscompiles it
                    acc[ii, ji] = acc[ii, ji] + (T.Cast("float32", dot[ii, ji] - corr[i0 + ii, kb])
                                                 * (sa[i0 + ii, kb] * block(S, g, kb, ji)))
        for ii in T.unroll(mt):
            for ji in T.vectorized(w):
                C[i0 + ii, g * w + ji] = acc[ii, ji] * column(S, g, ji)

    return body


def _neon_block(W, col, kb, aq):
    """Column col's block kb: sum of its 32 signed int4 weights times the int8 activations, int32."""
    v = W[col, kb, T.ramp(0, 1, L)]
    four = T.broadcast(T.int8(4), L)
    return _neon_sum(T.shift_right(T.shift_left(v, four), four), T.shift_right(v, four), kb, aq)  # nibbles


def _neon_sum(lo, hi, kb, aq):
    """The int32 sum of lo x block kb's activations 0-15 and hi x 16-31 (int8x16 each): two products a
    16-bit lane (|q a| <= 127 x 127), widened and added across."""
    p = (T.Cast("int16x16", lo) * T.Cast("int16x16", aq[0, T.ramp(kb * B, 1, L)])
         + T.Cast("int16x16", hi) * T.Cast("int16x16", aq[0, T.ramp(kb * B + L, 1, L)]))
    return T.call_llvm_pure_intrin("int32", "llvm.vector.reduce.add.v16i32", T.Cast("int32x16", p))


def _neon_block8(W, col, kb, aq):
    """Column col's block kb: sum of its 32 int8 weights (pack8) times the int8 activations, int32."""
    return _neon_sum(W[col, T.ramp(kb * B, 1, L)], W[col, T.ramp(kb * B + L, 1, L)], kb, aq)


def _neon_code(W, col, k):
    """neon: the signed code of row k, column col, float32."""
    left = T.Cast("int8", (1 - k % B // L) * 4)  # the low nibble (rows 0-15) shifted up first
    return T.Cast("float32", T.shift_right(T.shift_left(W[col, k // B, k % L], left), T.int8(4)))


def _decode_neon(K, N, bits=4):
    """A macro: C's one row from the int8 row aq, a task 64 columns, one block sum a column and block
    (bits 8: times the column's scale S[j] at the end, as _vnni_rows)."""
    block = _neon_block8 if bits == 8 else _neon_block
    scale, column = _scales(bits)

    @T.macro
    def body(W, S, C, aq, sa, corr):
        for g in T.parallel(N // 64):
            for j in range(64):
                acc = T.decl_buffer((1,), "float32", scope="local")
                acc[0] = T.float32(0)
                for kb in range(K // B):
                    acc[0] = acc[0] + (T.Cast("float32", block(W, g * 64 + j, kb, aq))
                                       * (sa[0, kb] * scale(S, g, kb, j)))
                C[0, g * 64 + j] = acc[0] * column(S, g, j)

    return body


def _decode_vnni(K, N, how, bits=4):
    """A macro: C's one row from the int8 row aq, a task 64 columns (_vnni_rows of one row)."""
    row = _vnni_rows(K, 1, how, bits)

    @T.macro
    def body(W, S, C, aq, sa, corr):
        for g in T.parallel(N // 64):
            row(W, S, C, aq, sa, corr, g, 0)

    return body


def _prefill_vnni(K, N, how, bits=4):
    """A macro: C (M, N) from A quantized row by row as decode's is, a task 64 columns, in tiles of
    PREFILL's rows (avx2: 1) and a tail of single rows: llama.cpp's q4_0 x q8_0 for every row."""
    mt, KB = PREFILL if how == "vnni" else 1, K // B
    quantize = _quantize_row(K, _offset(how, bits))
    rows, row = _vnni_rows(K, mt, how, bits), _vnni_rows(K, 1, how, bits)

    @T.macro
    def body(A, W, S, C, M):
        aq = T.decl_buffer((M, K), "int8", scope="global")
        sa = T.decl_buffer((M, KB), "float32", scope="global")
        corr = T.decl_buffer((M, KB), "int32", scope="global")
        for i in T.parallel(M):
            quantize(A, aq, sa, corr, i)
        for g in T.parallel(N // 64):
            for io in range(M // mt):
                rows(W, S, C, aq, sa, corr, g, io * mt)
            for i in range(M // mt * mt, M):
                row(W, S, C, aq, sa, corr, g, i)

    return body


def _neon_weight(W, S, j0, k, ji):
    """neon: W[k, j0 + ji] times its scale, float32 (the prefill slab's, gemm.slab_prefill)."""
    return _neon_code(W, j0 + ji, k) * T.Cast("float32", S[j0 // 64, k // B, j0 % 64 + ji])


def _neon_weight8(W, S, j0, k, ji):
    """neon, int8: W[k, j0 + ji] times its column's scale, float32 (the prefill slab's)."""
    return T.Cast("float32", W[j0 + ji, k]) * S[j0 + ji]


def _offset(how, bits):
    """What the row quantizer's corr counts per unit of an activation block's sum: the weights' offset
    in vnni's unsigned operand (int4 q + 8 on x86, int8 q + 128 on vnni), 0 where none is added."""
    return {(4, "vnni"): 8, (4, "avx2"): 8, (8, "vnni"): 128}.get((bits, how), 0)


def gemm4_dot(K: int, N: int, tile, how: str) -> tirx.PrimFunc:
    """(A (M, K), W (`how`'s layout), S (pack_scales'), C (M, N)): gemm.gemm4's sums on int8
    activations (vnni, avx2: decode and prefill; neon: decode)."""
    return _gemm_dot(K, N, tile, how, 4)


def gemm8_dot(K: int, N: int, tile, how: str) -> tirx.PrimFunc:
    """(A (M, K), W (pack8's layout), S (N,) fp32, C (M, N)): gemm.gemm's int8 sums (per-channel
    weights, graph.quantize_kn) on int8 activations in blocks of 32 (llama.cpp's q8_0 x q8_0 with one
    weight scale a column), the same kernels as gemm4_dot's."""
    return _gemm_dot(K, N, tile, how, 8)


def _gemm_dot(K: int, N: int, tile, how: str, bits: int) -> tirx.PrimFunc:
    K, N = tirx.IntImm("int64", K), tirx.IntImm("int64", N)
    KB, quantize = K // B, _quantize_row(K, _offset(how, bits))
    if how in X86:
        wshape = (N // 64, K // 4, 2 * bits * L)
        wdtype, decode, prefill = ("uint8" if bits == 4 else "int8", _decode_vnni(K, N, how, bits),
                                   _prefill_vnni(K, N, how, bits))
    elif bits == 8:
        wshape, wdtype, decode, prefill = ((N, K), "int8", _decode_neon(K, N, 8),
                                           slab_prefill(K, N, tile, _neon_weight8))
    else:
        wshape, wdtype, decode, prefill = ((N, KB, L), "int8", _decode_neon(K, N),
                                           slab_prefill(K, N, tile, _neon_weight))
    sshape, sdtype = ((N,), "float32") if bits == 8 else ((N // 64, KB, 64), "float16")

    @T.prim_func(private=True, s_tir=False)
    def main(a: T.handle, w: T.handle, s: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        M = T.int64()
        A = T.match_buffer(a, (M, K), "float32")
        W = T.match_buffer(w, wshape, wdtype)
        S = T.match_buffer(s, sshape, sdtype)
        C = T.match_buffer(c, (M, N), "float32")
        if M == 1:
            aq = T.decl_buffer((1, K), "int8", scope="global")
            sa = T.decl_buffer((1, KB), "float32", scope="global")
            corr = T.decl_buffer((1, KB), "int32", scope="global")
            quantize(A, aq, sa, corr, 0)
            decode(W, S, C, aq, sa, corr)
        else:
            prefill(A, W, S, C, M)
    return main
