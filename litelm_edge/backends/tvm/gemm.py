"""Hand-written TIR for the weight matmuls `C (M, N) = A (M, K) @ W (K, N)`, M symbolic (T tokens).

Written as loops rather than scheduled, because two things the schedule could not give:
  - prefill: a register tile of MT rows x NJ columns with no row test inside the k loop (a
    schedule's split of the symbolic M puts one there, and LoopPartition cannot peel a symbolic
    loop), plus a tail of single rows;
  - decode (M = 1): a GEMV that streams W along N, NJ1 columns a task, not a tile padded to MT rows.
Each accumulator is one `local` buffer under 1024 bytes: TVM keeps smaller ones on the stack, where
LLVM turns them into vector registers; a larger one goes to a heap workspace, read and written
every k step. W is fp32, or int8 with one fp32 scale a column (weight-only, `graph.py`),
applied once to the finished sum: (sum_k a_k q_kj) s_j.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

TILE = (4, 32)  # MT x NJ fp32 = 8 AVX-512 (16 AVX2 / 32 NEON) accumulators, 512 bytes
NJ1 = 64        # decode GEMV columns a task (default): 16 NEON / 4 AVX-512 accumulators,
                # 256 bytes of W a row; the target's [tvm] gemv widens it (x86-tvm: 128)


def gemm(K: int, N: int, int8: bool, tile=TILE, nj1: int = NJ1, order=None,
         packed: bool = False) -> tirx.PrimFunc:
    """The PrimFunc (A, W, C) or, int8, (A, Wq, S, C); N must divide by NJ and NJ1. `order`: see
    _ordered. packed: W is (N / NJ1, K, NJ1) (schedule.PackWeights), so a decode task streams its
    columns' K x NJ1 block contiguously; NJ must divide NJ1."""
    nj, g = tile[1], nj1
    K, N = tirx.IntImm("int64", K), tirx.IntImm("int64", N)  # the shapes' dtype in Relax
    wdtype = "int8" if int8 else "float32"
    wshape = (N // g, K, g) if packed else (K, N)

    def _b(W, S, k, j0, ji, int8):  # W[k, j0 + ji], j0 a multiple of NJ (of NJ1 in decode)
        w = W[j0 // g, k, j0 % g + ji] if packed else W[k, j0 + ji]
        return T.Cast("float32", w) if int8 else w

    scale = (lambda S, j: S[j]) if int8 else (lambda S, j: T.float32(1))
    tile_ = tile_loops(K, tile, lambda W, S, k, jo, ji: _b(W, S, k, jo * nj, ji, int8), scale)

    @T.prim_func(private=True, s_tir=False)
    def main(a: T.handle, w: T.handle, s: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        M = T.int64()
        A = T.match_buffer(a, (M, K), "float32")
        W = T.match_buffer(w, wshape, wdtype)
        S = T.match_buffer(s, (N,), "float32")
        C = T.match_buffer(c, (M, N), "float32")
        if M == 1:  # decode: y (N,) += a_k * W[k, :], each task NJ1 columns
            for jo in T.parallel(N // nj1):
                acc = T.decl_buffer((nj1,), "float32", scope="local")
                for ji in T.vectorized(nj1):
                    acc[ji] = T.float32(0)
                for k in range(K):
                    for ji in T.vectorized(nj1):
                        acc[ji] = acc[ji] + A[0, k] * _b(W, S, k, jo * nj1, ji, int8)
                for ji in T.vectorized(nj1):
                    C[0, jo * nj1 + ji] = acc[ji] * scale(S, jo * nj1 + ji)
        else:
            for jo in T.parallel(N // nj):
                tile_(A, W, S, C, M, jo)

    return _ordered(main, int8, order)


def gather_packed(K: int, N: int, g: int, dtype: str) -> tirx.PrimFunc:
    """out (K, n) = W[:, idx] of a (K, N) matrix stored packed (N / g, K, g) (schedule.PackWeights):
    the tied embedding's columns, read from the head's one packed copy."""
    K, N = tirx.IntImm("int64", K), tirx.IntImm("int64", N)

    @T.prim_func(private=True, s_tir=False)
    def main(w: T.handle, i: T.handle, o: T.handle):
        # opaque (cache.OPAQUE): FuseOps leaves it alone (FuseTIR refuses its buffers in a group)
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})
        n = T.int64()
        W = T.match_buffer(w, (N // g, K, g), dtype)
        Idx = T.match_buffer(i, (n,), "int64")
        O = T.match_buffer(o, (K, n), dtype)
        for t in range(n):
            for k in range(K):
                O[k, t] = W[Idx[t] // g, k, Idx[t] % g]

    return main


def _ordered(main, int8: bool, order) -> tirx.PrimFunc:
    """main with fp32's unused S dropped and its parameters in `order`: their positions in the
    function replaced (match's), e.g. FuseTIR's (Wq, S, A, C)."""
    params = list(main.params) if int8 else [p for i, p in enumerate(main.params) if i != 2]  # fp32: no S
    if order is not None:  # params[i] goes where the replaced function had its i-th role
        params = [params[order.index(i)] for i in range(len(params))]
    return tirx.PrimFunc(params, main.body, main.ret_type, main.attrs)


def _nibble(W, g, k, b, shift):
    """The signed int4 of one nibble of byte b of group g's row k (W (N/64, K, 32), graph.pack_int4),
    as fp32; shift 0 (low) or 4 (high)."""
    sh = T.uint8(shift) if isinstance(shift, int) else T.Cast("uint8", shift)
    return T.Cast("float32", T.bitwise_and(T.shift_right(W[g, k, b], sh), T.uint8(15))) - T.float32(8)


def _slab(W, S, j0, k, ji):
    """W[k, j0 + ji] * its scale, fp32, for gemm4's prefill: column j0 + ji is in group j0 // 64, byte
    j0 % 32 + ji of its row, nibble (j0 % 64) // 32 (a tile of NJ <= 32 columns reads one nibble)."""
    return _nibble(W, j0 // 64, k, j0 % 32 + ji, j0 % 64 // 32 * 4) * S[k // 32, j0 + ji]


def _check_int4_tile(tile):
    if 32 % tile[1]:
        raise ValueError(f"int4-b32 needs a tile of at most 32 columns dividing 32, got {tile[1]}")


def tile_loops(K, tile, read, scale):
    """A macro, the prefill of task jo: C[i, jo NJ + ji] = scale(S, jo NJ + ji) x the sum over k of
    A[i, k] read(W, S, k, jo, ji), in MT-row register tiles (no row test inside the k loop) and a
    tail of the last M % MT rows one at a time."""
    mt, nj = tile

    @T.macro
    def body(A, W, S, C, M, jo):
        for io in range(M // mt):  # full MT-row tiles
            acc = T.decl_buffer((mt, nj), "float32", scope="local")
            for ii in T.unroll(mt):
                for ji in T.vectorized(nj):
                    acc[ii, ji] = T.float32(0)
            for k in range(K):
                for ii in T.unroll(mt):
                    for ji in T.vectorized(nj):
                        a = A[io * mt + ii, k]
                        acc[ii, ji] = acc[ii, ji] + a * read(W, S, k, jo, ji)
            for ii in T.unroll(mt):
                for ji in T.vectorized(nj):
                    C[io * mt + ii, jo * nj + ji] = acc[ii, ji] * scale(S, jo * nj + ji)
        for i in range(M // mt * mt, M):
            acc1 = T.decl_buffer((nj,), "float32", scope="local")
            for ji in T.vectorized(nj):
                acc1[ji] = T.float32(0)
            for k in range(K):
                for ji in T.vectorized(nj):
                    acc1[ji] = acc1[ji] + A[i, k] * read(W, S, k, jo, ji)
            for ji in T.vectorized(nj):
                C[i, jo * nj + ji] = acc1[ji] * scale(S, jo * nj + ji)

    return body


def slab_prefill(K, N, tile, weight):
    """A macro, the int4 prefills' (gemm4's, dot.py's "neon"): C (M, N) on fp32 activations, each
    task's K x NJ slab dequantized once into wd (weight(W, S, j0, k, ji): W[k, j0 + ji] times its
    scale, fp32), then tile_loops over it. Called as prefill(A, W, S, C, M)."""
    nj = tile[1]
    tile_ = tile_loops(K, tile, lambda wd, S, k, jo, ji: wd[k, ji], lambda S, j: T.float32(1))

    @T.macro
    def body(A, W, S, C, M):
        for jo in T.parallel(N // nj):
            wd = T.decl_buffer((K, nj), "float32", scope="global")  # the task's slab, dequantized
            for k in range(K):
                for ji in T.vectorized(nj):
                    wd[k, ji] = weight(W, S, jo * nj, k, ji)
            tile_(A, wd, S, C, M, jo)

    return body


# gemm4: int4-b32 weights (graph.quantize_int4, then graph.pack_int4), the PrimFunc (A (M, K), Wp
# (N/64, K, 32) uint8, S (K/32, N), C (M, N)). Decode: a task is one 64-column group, its K rows of 32
# bytes contiguous (streamed, as PackWeights does for int8; row-major, a task read 32 bytes from each
# of K rows N/2 apart); the 32-row block sums a_k q_kj in fp32 and adds it times its scale. Prefill:
# each task dequantizes its K x NJ slab once (`_slab`: a nibble and a scale per weight, not per weight
# and row tile: 1.41x prefill-64), then runs the MT x NJ tile of gemm() over it (NJ must divide 32).
def gemm4(K: int, N: int, tile=TILE) -> tirx.PrimFunc:
    """int4-b32 GEMV / GEMM (see the comment above)."""
    _check_int4_tile(tile)
    K, N = tirx.IntImm("int64", K), tirx.IntImm("int64", N)
    KB, G, H = K // 32, N // 64, 32  # scale blocks, column groups, columns a nibble half
    q, prefill = _nibble, slab_prefill(K, N, tile, _slab)
    @T.prim_func(private=True, s_tir=False)
    def main(a: T.handle, w: T.handle, s: T.handle, c: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        M = T.int64()
        A = T.match_buffer(a, (M, K), "float32")
        W = T.match_buffer(w, (G, K, H), "uint8")
        S = T.match_buffer(s, (KB, N), "float32")
        C = T.match_buffer(c, (M, N), "float32")
        if M == 1:
            for g in T.parallel(G):
                acc = T.decl_buffer((64,), "float32", scope="local")
                blk = T.decl_buffer((64,), "float32", scope="local")
                for ji in T.vectorized(64):
                    acc[ji] = T.float32(0)
                for kb in range(KB):
                    for ji in T.vectorized(64):
                        blk[ji] = T.float32(0)
                    for kk in range(32):
                        for ji in T.vectorized(H):
                            blk[ji] = blk[ji] + A[0, kb * 32 + kk] * q(W, g, kb * 32 + kk, ji, 0)
                        for ji in T.vectorized(H):
                            blk[H + ji] = blk[H + ji] + A[0, kb * 32 + kk] * q(W, g, kb * 32 + kk, ji, 4)
                    for ji in T.vectorized(64):
                        acc[ji] = acc[ji] + blk[ji] * S[kb, g * 64 + ji]
                for ji in T.vectorized(64):
                    C[0, g * 64 + ji] = acc[ji]
        else:
            prefill(A, W, S, C, M)
    return main


def match(func: tirx.PrimFunc):
    """(K, N, int8, order) when `func` is a weight matmul of FuseOpsByPattern's groups, else None:
    buffers A (M, K) fp32, W (K, N) fp32 or int8 [with S (N,) fp32], C (M, N) fp32 (M symbolic, K
    and N static), in any order (FuseTIR puts an int8 group's constants first: Wq, S, A, C);
    order[i] is the position of role i (A, W[, S], C) among func's parameters."""
    bufs = [p.ty for p in func.params]  # a buffer parameter's type holds its shape and dtype
    if len(bufs) not in (3, 4) or not all(isinstance(b, tirx.buffer.BufferType) for b in bufs):
        return None
    static = lambda x: isinstance(x, tirx.IntImm)  # noqa: E731
    if any(len(b.shape) not in (1, 2) for b in bufs):
        return None
    act = [i for i, b in enumerate(bufs) if len(b.shape) == 2 and not static(b.shape[0])]  # A and C, inputs first
    wts = [i for i, b in enumerate(bufs) if len(b.shape) == 2 and static(b.shape[0])]
    sc = [i for i, b in enumerate(bufs) if len(b.shape) == 1]
    int8 = len(bufs) == 4
    if len(act) != 2 or len(wts) != 1 or len(sc) != int(int8) or act[1] != len(bufs) - 1:
        return None
    a, w, c = bufs[act[0]], bufs[wts[0]], bufs[act[1]]
    if not all(map(static, (*w.shape, a.shape[1], c.shape[1]))) or not c.shape[0].same_as(a.shape[0]):
        return None
    K, N = int(w.shape[0]), int(w.shape[1])
    if (a.dtype, c.dtype, w.dtype) != ("float32", "float32", "int8" if int8 else "float32"):
        return None
    if int8 and (bufs[sc[0]].dtype != "float32" or not static(bufs[sc[0]].shape[0]) or int(bufs[sc[0]].shape[0]) != N):
        return None
    if int(a.shape[1]) != K or int(c.shape[1]) != N:
        return None
    return K, N, int8, (act[0], wts[0], *sc, act[1])
