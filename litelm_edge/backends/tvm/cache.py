"""The KV cache of the TVM graph, written in place: one kernel a layer that stores the step's keys and
values at their positions and attends over the cache's prefix.

graph.CachedForward calls graph.attention (a torch custom op) with the layer's caches, which the
runtime allocates at a capacity C and grows; `pos` (a (1,) int64 input) counts the tokens cached
before the call. The importer maps that op (convert_map) to a placeholder, and AttentionKernels makes
each one `call_tir_inplace(attention)`: the caches are outputs aliased to the inputs, so nothing
copies the past. Before, each decode step concatenated every layer's cache into a new tensor one
position longer (9 % of the 26M's int4 decode step, growing with the context) and ran the scores,
the bias add, the softmax and x V as four kernels. Runs in the TVM toolchain venv.
"""
from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.script import tirx as T

OPAQUE = 8  # tvm::relax::OpPatternKind::kOpaque: FuseOps leaves the kernel in a group of its own
PLACEHOLDER = "litelm_edge.attention"  # the importer's call, until AttentionKernels replaces it
LANES = 16  # positions (scores, softmax) and head dims (x V) a vector: 16 fp32 (1 AVX-512, 4 NEON registers)
ROWS = 4  # query rows a register tile: each key / value vector loaded once for 4 rows


def fast_exp(x):
    """exp(x) in float32 as TVM's topi.fast_exp computes it, bit for bit (a polynomial and an exponent
    shift, within 4e-6 relative down to exp(-87); what the graph's softmax ran on, elementwise.py):
    LLVM vectorises it, where libm's expf is one call a lane."""
    x = T.max(T.min(x, T.float32(88.3762626647950)), T.float32(-88.3762626647949))
    n = T.floor(x * T.float32(1.44269504088896341) + T.float32(0.5))
    f = x - n * T.float32(0.6931471805599453)
    y = T.float32(1.9875691500e-4)
    for p in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        y = y * f + T.float32(p)
    y = y * f * f + f + T.float32(1.0)
    return T.reinterpret("float32", T.shift_left(T.Cast("int32", n + T.float32(127.0)), 23)) * y


def _scores(g, hd):
    """A macro: head h's scores, row r at S[r * C + j] for the positions j its row tile sees, in
    ROWS x LANES register tiles; a vector may run past a row's last position into the capacity (read,
    never used: CV whole vectors fit a row); a capacity not a whole number of vectors ends in scalars."""
    mt, nj = ROWS, LANES

    @T.macro
    def body(Q, KC, S, h, P, N, R, C, CV):
        for io in range((R + mt - 1) // mt):  # row tiles (the last one partial)
            i0 = io * mt
            lim = T.min(P + (T.min(i0 + mt, R) - 1) // g + 1, N)  # positions the tile sees
            rows = T.min(mt, R - i0)
            nv = T.min((lim + nj - 1) // nj, CV)
            for jo in range(nv):
                j0 = jo * nj
                acc = T.decl_buffer((mt, nj), "float32", scope="local")
                for ii in T.unroll(mt):
                    for ji in T.vectorized(nj):
                        acc[ii, ji] = T.float32(0)
                for d in range(hd):
                    for ii in T.unroll(mt):
                        qi = T.min(i0 + ii, R - 1)  # a partial tile's missing rows: the last (not stored)
                        for ji in T.vectorized(nj):
                            acc[ii, ji] = acc[ii, ji] + Q[h, qi, d] * KC[0, h, d, j0 + ji]
                for ii in range(rows):
                    for ji in T.vectorized(nj):
                        S[(i0 + ii) * C + j0 + ji] = acc[ii, ji]
            for ii in range(rows):
                for j in range(nv * nj, lim):
                    a1 = T.decl_buffer((1,), "float32", scope="local")
                    a1[0] = T.float32(0)
                    for d in range(hd):
                        a1[0] = a1[0] + Q[h, i0 + ii, d] * KC[0, h, d, j]
                    S[(i0 + ii) * C + j] = a1[0]

    return body


def _softmax(g):
    """A macro: row r of S (at r * C) softmaxed over its positions 0..P + r // g, zeros after them to
    N (x V reads its row tile's widest), on fast_exp; whole vectors, then scalars."""
    nj = LANES

    @T.macro
    def body(S, r, P, N, C, CV):
        n = P + r // g + 1
        nv = T.min((n + nj - 1) // nj, CV)
        nvN = T.min((N + nj - 1) // nj, CV)
        lanes = T.decl_buffer((nj,), "float32", scope="local")
        top = T.decl_buffer((1,), "float32", scope="local")
        for ji in T.vectorized(nj):
            lanes[ji] = T.float32(-3.0e38)
        for jo in range(nv):
            for ji in T.vectorized(nj):
                lanes[ji] = T.max(lanes[ji], T.if_then_else(jo * nj + ji < n, S[r * C + jo * nj + ji],
                                                           T.float32(-3.0e38)))
        top[0] = T.float32(-3.0e38)
        for j in range(nv * nj, n):
            top[0] = T.max(top[0], S[r * C + j])
        for ji in range(nj):
            top[0] = T.max(top[0], lanes[ji])
        for ji in T.vectorized(nj):
            lanes[ji] = T.float32(0)
        for jo in range(nvN):
            for ji in T.vectorized(nj):
                S[r * C + jo * nj + ji] = T.if_then_else(
                    jo * nj + ji < n, fast_exp(S[r * C + jo * nj + ji] - top[0]), T.float32(0))
                lanes[ji] = lanes[ji] + S[r * C + jo * nj + ji]
        for j in range(nvN * nj, N):
            S[r * C + j] = T.if_then_else(j < n, fast_exp(S[r * C + j] - top[0]), T.float32(0))
            lanes[0] = lanes[0] + S[r * C + j]
        top[0] = T.float32(0)
        for ji in range(nj):
            top[0] = top[0] + lanes[ji]
        top[0] = T.float32(1) / top[0]
        for jo in range(nv):
            for ji in T.vectorized(nj):
                S[r * C + jo * nj + ji] = S[r * C + jo * nj + ji] * top[0]
        for j in range(nv * nj, n):
            S[r * C + j] = S[r * C + j] * top[0]

    return body


def _times_v(g, hd):
    """A macro: head h's y = probabilities x V over the positions each row tile sees, ROWS rows x w dims
    a register tile (w = LANES, or hd when LANES does not divide it)."""
    mt, w = ROWS, LANES if int(hd) % LANES == 0 else int(hd)

    @T.macro
    def body(S, VC, Y, h, P, N, R, C):
        for io in range((R + mt - 1) // mt):
            i0 = io * mt
            lim = T.min(P + (T.min(i0 + mt, R) - 1) // g + 1, N)
            rows = T.min(mt, R - i0)
            for dc in range(hd // w):
                d0 = dc * w
                acc = T.decl_buffer((mt, w), "float32", scope="local")
                for ii in T.unroll(mt):
                    for di in T.vectorized(w):
                        acc[ii, di] = T.float32(0)
                for j in range(lim):
                    for ii in T.unroll(mt):
                        si = T.min(i0 + ii, R - 1) * C + j
                        for di in T.vectorized(w):
                            acc[ii, di] = acc[ii, di] + S[si] * VC[0, h, j, d0 + di]
                for ii in range(rows):
                    for di in T.vectorized(w):
                        Y[h, i0 + ii, d0 + di] = acc[ii, di]

    return body


def attention(nkv: int, g: int, hd: int) -> tirx.PrimFunc:
    """graph.attention for nkv K/V heads of hd dims, g query rows a position: (q (nkv, R, hd),
    k (1, nkv, hd, T), v (1, nkv, T, hd), k_cache (1, nkv, hd, C), v_cache (1, nkv, C, hd),
    pos (1,) int64, y (nkv, R, hd)), R = T * g; k_cache and v_cache written at P..P+T-1 (P = pos[0]),
    row r attends over positions 0..P + r // g. One K/V head a task: the writes, the scores
    (_scores), the softmax (_softmax), x V (_times_v)."""
    nkv, g, hd = (tirx.IntImm("int64", x) for x in (nkv, g, hd))
    scores, softmax, times_v = _scores(g, hd), _softmax(g), _times_v(g, hd)

    @T.prim_func(private=True, s_tir=False)
    def main(q: T.handle, k: T.handle, v: T.handle, kc: T.handle, vc: T.handle, pos: T.handle, y: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": OPAQUE})
        R, Tn, C = T.int64(), T.int64(), T.int64()
        Q = T.match_buffer(q, (nkv, R, hd), "float32")
        K = T.match_buffer(k, (1, nkv, hd, Tn), "float32")
        V = T.match_buffer(v, (1, nkv, Tn, hd), "float32")
        KC = T.match_buffer(kc, (1, nkv, hd, C), "float32")
        VC = T.match_buffer(vc, (1, nkv, C, hd), "float32")
        POS = T.match_buffer(pos, (1,), "int64")
        Y = T.match_buffer(y, (nkv, R, hd), "float32")
        P = POS[0]
        N = P + Tn
        CV = C // LANES  # whole vectors in a cache row
        assert 0 <= P and N <= C, "KV cache overflow: pos + T exceeds the cache's capacity"
        for h in T.parallel(nkv):
            for d in range(hd):
                for t in range(Tn):
                    KC[0, h, d, P + t] = K[0, h, d, t]
            for t in range(Tn):
                for d in T.vectorized(hd):
                    VC[0, h, P + t, d] = V[0, h, t, d]
            S = T.decl_buffer((R * C,), "float32")  # its scores, then probabilities: row r at r * C
            scores(Q, KC, S, h, P, N, R, C, CV)
            for r in range(R):
                softmax(S, r, P, N, C, CV)
            times_v(S, VC, Y, h, P, N, R, C)

    return main


def convert_map() -> dict:
    """The importer's converter for graph.attention (from_exported_program's custom_convert_map): a
    pure-packed placeholder call carrying g, which AttentionKernels replaces by the kernel."""

    def convert(node, importer):
        q, k, v, kc, vc, pos = (importer.env[a] for a in node.args[:6])
        return importer.block_builder.emit(relax.call_pure_packed(
            PLACEHOLDER, q, k, v, kc, vc, pos, relax.prim_value(int(node.args[6]), "int64"),
            ty_args=q.ty))

    return {"attention.default": convert}


def rewrite_functions(mutator) -> tvm.IRModule:
    """Every Relax function of mutator.mod visited by the mutator; the module its builder holds."""
    for gv, func in mutator.mod.functions.items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


@relax.expr_functor.mutator
class _AttentionRewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.mod, self.kernels = mod, {}

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        fn = call.args[0] if call.op == tvm.ir.Op.get("relax.call_pure_packed") else None
        if not isinstance(fn, relax.ExternFunc) or fn.global_symbol != PLACEHOLDER:
            return call
        q, k, v, kc, vc, pos, g = call.args[1:]
        nkv, _, hd = q.ty.shape
        key = (int(nkv), int(g.value), int(hd))
        if key not in self.kernels:
            self.kernels[key] = self.builder_.add_func(attention(*key), "attention")
        out = self.builder_.emit(relax.call_tir_inplace(self.kernels[key], [q, k, v, kc, vc, pos], [3, 4, -1],
                                                        [kc.ty, vc.ty, q.ty]))
        return relax.TupleGetItem(out, 2)

    def transform(self) -> tvm.IRModule:
        return rewrite_functions(self)


@tvm.transform.module_pass(opt_level=0, name="AttentionKernels")
class AttentionKernels:
    """Every graph.attention placeholder (convert_map's) -> call_tir_inplace of attention(nkv, g, hd)
    with the caches as its aliased outputs."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _AttentionRewriter(mod).transform()
