"""The TVM compile pipeline, with hand-written CPU schedules for the matmuls.

TVM's default Relax CPU pipeline neither fuses nor schedules: every matmul is a naive triple loop
on one core (~16x slower than torch). Here:

  0. PackWeights stores each weight matrix (N / g, K, g), g the decode GEMV width, and calls
     gemm.gemm(packed) on it: a decode task streams its g columns contiguously (a tied head too:
     its embedding gathers from the packed copy). Attention is not here: convert.relax_module
     makes each layer's one call of cache.attention (writes the cache in place, then attends).
  1. FuseOpsByPattern groups `matmul(x, astype(Wq) * scale)` (int8 weight-only) and plain
     matmuls, so the dequantisation runs inside the matmul and int8 stays int8 in memory.
  2. LegalizeOps lowers everything to TIR (sigmoid and softmax on a polynomial exp,
     fast_exp_legalizations); FuseOps groups the remaining elementwise / injective
     ops (norms, rope, SiLU, residual adds); FuseTIR merges each group into one PrimFunc. (The
     cache position is data since the in-place cache, so the rope positions' `arange` no longer
     meets TVM 0.27's FuseTIR failure, benchmarks/tvm_fuseops_arange.py, that ArangeOpaque
     worked around by keeping it out of the groups.)
  3. `ScheduleMatmul` replaces each weight matmul (fp32 or int8) with the hand-written TIR of
     `gemm.py` (an MT x NJ register tile with no bounds test in the k loop, and a GEMV for
     decode); any other matmul (a shape gemm.py does not take) is scheduled here: tiled into a
     register block, the (K, N) operand streamed along N with vector loads, parallel over column
     tiles (and batch), the dequantisation inlined into the inner loop. `Elementwise` vectorizes
     the kernels of injective ops (SiLU x up, rope, adds).
  4. The standard lowering and VM passes.

Runs in the TVM toolchain venv. The tile sizes come from the target TOML (`[tvm] tile`, `[tvm] gemv`).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, s_tir, tirx
from tvm.relax.dpl import is_op, wildcard
from tvm.s_tir import dlight

from litelm_edge.backends.tvm import dot as int4_dot
from litelm_edge.backends.tvm import gemm as tvm_gemm
from litelm_edge.backends.tvm.cache import rewrite_functions
from litelm_edge.backends.tvm.elementwise import Elementwise, fast_exp_legalizations

# Split a tiled loop over the symbolic T into full tiles (no bounds test in the inner loops) and a
# tail: the register tile's row predicate otherwise sits inside the k loop.
PASS_CONFIG = {"s_tir.LoopPartition": {"partition_const_loop": True}}
DEFAULT_TILE = (4, 16)  # MT rows x NJ columns: 4x16 fp32 = 8 AVX2 / 16 NEON accumulators
MAX_TILE_BYTES = 1024  # TVM keeps a smaller local buffer on the stack (registers), a larger one on the heap


def _patterns():
    deq = is_op("relax.multiply")(is_op("relax.astype")(wildcard()), wildcard())
    return [("deq_matmul", is_op("relax.matmul")(wildcard(), deq)),
            ("matmul", is_op("relax.matmul")(wildcard(), wildcard()))]


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, (int, tirx.IntImm)) else None


def _schedule_block(sch: s_tir.Schedule, block, tile: tuple[int, int]):
    """C[b..., i, j] += A[b..., i, k] * B[b..., k, j], B contiguous along j."""
    for producer in sch.get_producers(block):  # the dequantisation blocks
        sch.compute_inline(producer)
    *batch, i, j, k = sch.get_loops(block)
    mt, nj = tile
    n = _static(sch.get(j).extent)
    # symbolic N: LoopPartition peels the ragged tail
    vector = n is None or n % nj == 0
    jo, ji = sch.split(j, [None, nj if vector else 1])
    io, ii = sch.split(i, [None, mt])
    sch.reorder(*batch, jo, io, k, ii, ji)
    sch.parallel(sch.fuse(*batch, jo))
    if vector:  # before decompose_reduction: TVM refuses to vectorise the update block after it
        sch.unroll(ii)
        sch.vectorize(ji)
    acc = sch.cache_write(block, 0, "local")  # the register tile, written back once
    sch.reverse_compute_at(acc, io)
    sch.decompose_reduction(block, k)
    if vector:
        sch.vectorize(sch.get_loops(acc)[-1])


def _matmul_block(sch: s_tir.Schedule):
    for block in sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []:
        if sch.get(block).name_hint == "matmul":
            return block
    return None


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # a PrimFunc without a root block has nothing to schedule
        return False


@tvm.transform.module_pass(opt_level=0, name="ScheduleMatmul")
class ScheduleMatmul:
    def __init__(self, tile=DEFAULT_TILE, gemv: int = tvm_gemm.NJ1):
        self.tile, self.gemv = tuple(tile), gemv
        if self.tile[0] * self.tile[1] * 4 >= MAX_TILE_BYTES:
            raise ValueError(f"tile {self.tile[0]}x{self.tile[1]} holds {self.tile[0] * self.tile[1] * 4} bytes of "
                             f"fp32 accumulators; under {MAX_TILE_BYTES} stay in registers: pick e.g. 4,32 "
                             "or 4,16")

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        out = tvm.IRModule(mod.functions, attrs=mod.attrs)
        for gv, func in mod.functions.items():
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and "tirx.is_scheduled" in func.attrs):
                continue
            sch = s_tir.Schedule(func)
            block = _matmul_block(sch)
            if block is None:
                continue
            shape = tvm_gemm.match(func)
            if shape and shape[1] % self.tile[1] == 0 and shape[1] % tvm_gemm.NJ1 == 0:
                K, N, int8, order = shape
                nj1 = self.gemv if N % self.gemv == 0 else tvm_gemm.NJ1  # e.g. SmolLM2's 576: 64
                out[gv] = tvm_gemm.gemm(K, N, int8, tile=self.tile, nj1=nj1, order=order)
                continue
            _schedule_block(sch, block, self.tile)
            out[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        return out


@relax.expr_functor.mutator
class _Int4Rewriter(relax.PyExprMutator):
    """matmul(x, W) with W a constant (K, N) fp32 -> call_tir(gemm4, x, Wp, S): W quantised and packed
    (graph.pack_int4) here; with dot ("vnni" / "neon"), dot.gemm4_dot on dot.pack's layout of the codes."""

    def __init__(self, mod: tvm.IRModule, tile, kept: list, dot: str | None):
        super().__init__(mod)
        self.mod, self.tile, self.kernels, self.kept, self.dot = mod, tile, {}, kept, dot
        self.done: list = []  # (constant, its replacement): a matrix read by two functions, once

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        c = call.args[1] if call.op == tvm.ir.Op.get("relax.matmul") else None
        w = c.value if isinstance(c, tvm.ir.expr.Constant) else None  # a relax constant: its tensor
        if not isinstance(w, tvm.runtime.Tensor) or w.dtype != "float32" or len(w.shape) != 2:
            return call
        for src, make in self.done:
            if src.same_as(c):
                return make(call)
        make = self._replacement(w)
        self.done.append((c, make))
        return make(call)

    def _replacement(self, w):
        """call -> its replacement, for the matmuls by the constant matrix w."""
        import torch
        from litelm_edge.backends.tvm.graph import (INT4_BLOCK, INT4_GROUP, int4_codes, pack_int4,
                                                    quantize_int4, quantize_kn)
        K, N = (int(x) for x in w.shape)
        if K % INT4_BLOCK or N % INT4_GROUP:  # e.g. a tiny model's 32-wide k/v: int8 per channel, recorded
            self.kept.append([K, N])
            q, s = quantize_kn(torch.from_numpy(w.numpy()))  # the int8 build's own graph: deq_matmul
            q, s = relax.const(q.numpy()), relax.const(s.numpy())
            return lambda call: self.builder_.normalize(
                relax.op.matmul(call.args[0], relax.op.multiply(relax.op.astype(q, "float32"), s)))
        if (K, N) not in self.kernels:
            f, name = ((int4_dot.gemm4_dot(K, N, self.tile, self.dot), f"gemm_int4{self.dot}_{K}x{N}")
                       if self.dot else (tvm_gemm.gemm4(K, N, self.tile), f"gemm_int4_{K}x{N}"))
            self.kernels[K, N] = self.builder_.add_func(f, name)
        packed, scale = quantize_int4(torch.from_numpy(w.numpy()))
        if self.dot:
            wp = int4_dot.pack(int4_codes(packed).numpy(), self.dot)
            scale = int4_dot.pack_scales(scale.numpy())
        else:
            wp, scale = pack_int4(packed).numpy(), scale.numpy()
        wp, scale, f = relax.const(wp), relax.const(scale), self.kernels[K, N]
        return lambda call: relax.call_tir(f, [call.args[0], wp, scale], call.ty)

    def transform(self) -> tvm.IRModule:
        return rewrite_functions(self)


@tvm.transform.module_pass(opt_level=0, name="Int4Matmuls")
class Int4Matmuls:
    """int4-b32: every matmul by a constant fp32 matrix becomes gemm.gemm4 on its int4 blocks (the
    graph keeps only the head int8 and nothing else fp32: graph.prepare). A matrix whose shape
    the int4 layout cannot hold (K % 32, N % 64) gets the int8 build's per-channel weights and is
    listed in `kept` (convert.json and the manifest say so); every published model's fits.
    dot: "vnni" / "neon": dot.gemm4_dot instead (integer dot products; dot.kind says where)."""

    def __init__(self, tile=DEFAULT_TILE, kept: list | None = None, dot: str | None = None):
        self.tile, self.kept, self.dot = tuple(tile), kept if kept is not None else [], dot

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _Int4Rewriter(mod, self.tile, self.kept, self.dot).transform()


@relax.expr_functor.visitor
class _ConstantUses(relax.PyExprVisitor):
    """The constants some op reads other than as a matmul's weight (directly, fp32, or through
    astype, int8) or as a tied embedding's table (take along axis 1): packing those would store
    them twice. A tied head's table is packable: its take becomes gemm.gather_packed."""

    def __init__(self):
        super().__init__()
        self.shared: list = []

    def visit_call_(self, call):
        ok = {tvm.ir.Op.get("relax.astype"): 0, tvm.ir.Op.get("relax.matmul"): 1}.get(call.op)
        if call.op == tvm.ir.Op.get("relax.take") and int(call.attrs.axis) == 1:
            ok = 0
        self.shared += [a for i, a in enumerate(call.args) if isinstance(a, tvm.ir.expr.Constant) and i != ok]
        super().visit_call_(call)


@relax.expr_functor.mutator
class _PackRewriter(relax.PyExprMutator):
    """matmul(x, W) or matmul(x, astype(Wq) * S), W / Wq a constant (K, N) read by nothing else
    -> call_tir(gemm(packed), x, Wp[, S]) with Wp = W as (N / g, K, g): each decode task's g
    columns contiguous (the GEMV streams them; row-major it reads g bytes from K rows N apart).
    take(W, idx, axis=1) of such a constant (a tied embedding) -> call_tir(gather_packed, Wp, idx):
    one packed copy serves the head and the embedding."""

    def __init__(self, mod: tvm.IRModule, tile, g: int, shared: list, dot: str | None = None):
        super().__init__(mod)
        self.mod, self.tile, self.g, self.shared, self.kernels, self.dot = mod, tile, g, shared, {}, dot
        self.packed: list = []  # (constant, layout, its packed constant): each matrix packed once

    def _dot8(self, c) -> bool:
        """Whether the int8 constant c goes to dot.gemm8_dot (a kernel for the target, and its shape)."""
        K, N = (int(x) for x in c.value.shape)
        return bool(self.dot) and c.value.dtype == "int8" and K % int4_dot.B == 0 and N % 64 == 0

    def _width(self, N: int) -> int | None:
        """The GEMV width g a matrix of N columns is packed at, or None if it is not packed."""
        g = self.g if N % self.g == 0 else tvm_gemm.NJ1  # SmolLM2's 576 and 192: 64, as the unpacked path
        return None if N % g or g % self.tile[1] else g

    def _pack(self, c, g: int | None):
        """c packed (N / g, K, g), or with g None in dot.pack8's layout, once."""
        for src, layout, p in self.packed:
            if src.same_as(c) and layout == g:
                return p
        W = c.value.numpy()
        K, N = W.shape
        p = relax.const(int4_dot.pack8(W, self.dot) if g is None
                        else np.ascontiguousarray(W.reshape(K, N // g, g).transpose(1, 0, 2)))
        self.packed.append((c, g, p))
        return p

    def _kernel(self, key: tuple, make, name: str):
        if key not in self.kernels:
            self.kernels[key] = self.builder_.add_func(make(), name)
        return self.kernels[key]

    def _gather(self, call):
        c = self._const(call.args[0])
        if c is not None and len(c.value.shape) == 2 and self._dot8(c):
            K, N = (int(x) for x in c.value.shape)
            f = self._kernel(("gather8", K, N), lambda: int4_dot.gather8(K, N, self.dot),
                             f"gather_int8{self.dot}_{K}x{N}")
            return relax.call_tir(f, [self._pack(c, None), call.args[1]], call.ty)
        g = self._width(int(c.value.shape[1])) if c is not None and len(c.value.shape) == 2 else None
        if g is None:
            return call
        (K, N), dt = (int(x) for x in c.value.shape), c.value.dtype
        f = self._kernel(("gather", K, N, dt), lambda: tvm_gemm.gather_packed(K, N, g, dt),
                         f"gather_{'fp32' if dt == 'float32' else dt}_{K}x{N}_packed")  # the gemm's names
        return relax.call_tir(f, [self._pack(c, g), call.args[1]], call.ty)

    def _bound(self, e):
        """The expression a dataflow variable is bound to; any other expression as it is."""
        return self.lookup_binding(e) if isinstance(e, relax.Var) else e

    def _const(self, e):
        e = self._bound(e)
        if not isinstance(e, tvm.ir.expr.Constant) or any(e.same_as(s) for s in self.shared):
            return None
        return e

    def _weight(self, w):
        """(W constant, S constant or None) of a weight operand, else None."""
        if (c := self._const(w)) is not None:
            return (c, None) if c.value.dtype == "float32" else None
        mul = self.lookup_binding(w) if isinstance(w, relax.Var) else None
        if not isinstance(mul, relax.Call) or mul.op != tvm.ir.Op.get("relax.multiply"):
            return None
        cast = self._bound(mul.args[0])
        if not isinstance(cast, relax.Call) or cast.op != tvm.ir.Op.get("relax.astype"):
            return None
        q, s = self._const(cast.args[0]), mul.args[1]
        s = self._bound(s)
        ok = (q is not None and q.value.dtype == "int8" and isinstance(s, tvm.ir.expr.Constant)
              and len(s.value.shape) == 1)
        return (q, s) if ok else None

    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        if call.op == tvm.ir.Op.get("relax.take") and int(call.attrs.axis) == 1:
            return self._gather(call)
        x_shape = getattr(call.args[0].ty, "shape", None) if call.op == tvm.ir.Op.get("relax.matmul") else None
        if x_shape is None or len(x_shape) != 2:
            return call
        # the weight a constant of fixed shape (any other matmul is left to ScheduleMatmul)
        w = self._weight(call.args[1])
        if w is None or len(w[0].value.shape) != 2:
            return call
        K, N = (int(x) for x in w[0].value.shape)
        if w[1] is not None and self._dot8(w[0]):  # int8 on integer dot products
            f = self._kernel(("dot8", K, N), lambda: int4_dot.gemm8_dot(K, N, self.tile, self.dot),
                             f"gemm_int8{self.dot}_{K}x{N}")
            return relax.call_tir(f, [call.args[0], self._pack(w[0], None), w[1]], call.ty)
        if (g := self._width(N)) is None:
            return call
        int8 = w[1] is not None
        f = self._kernel((K, N, int8), lambda: tvm_gemm.gemm(K, N, int8, tile=self.tile, nj1=g, packed=True),
                         f"gemm_{'int8' if int8 else 'fp32'}_{K}x{N}_packed")
        args = [call.args[0], self._pack(w[0], g)] + ([w[1]] if int8 else [])
        return relax.call_tir(f, args, call.ty)

    def transform(self) -> tvm.IRModule:
        return rewrite_functions(self)


@tvm.transform.module_pass(opt_level=0, name="PackWeights")
class PackWeights:
    """Every weight matmul whose N divides by the GEMV width g (else by 64) gets its matrix packed
    (N / g, K, g) and gemm.gemm(packed) (bit-identical: the same sums in the same order). Measured
    alone, out of cache, a K 512 x N 1408 int8 GEMV: 252-283 us row-major, 54-80 us packed (docs/rpi4.md).
    dot (dot.kind's kernel, or None): int8 matrices of K % 32 == 0 and N % 64 == 0 get dot.pack8's
    layout and dot.gemm8_dot instead (int8 activations in blocks of 32, integer sums), their tied
    embedding dot.gather8."""

    def __init__(self, tile, g: int, dot: str | None = None):
        self.tile, self.g, self.dot = tuple(tile), g, dot

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        seen = _ConstantUses()
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                seen.visit_expr(func)
        return _PackRewriter(mod, self.tile, self.g, seen.shared, self.dot).transform()


def pipeline(target: tvm.target.Target, tile=DEFAULT_TILE, int4: bool = False, kept: list | None = None,
             gemv: int = tvm_gemm.NJ1, fuse: bool = True, pack: bool = True, dot: str | None = None,
             dot8: str | None = None):
    """The Relax pipeline: (int4) int4 matmuls, pattern fusion, legalise, fuse the elementwise ops,
    fuse TIR, schedule, lower. kept: filled with the [K, N] of matrices an int4 build made int8 (the
    layout cannot hold them). gemv: decode GEMV columns a task. fuse=False: no FuseOps (one kernel
    an op outside the matmul groups, as before it ran; tests compare the two). dot: the int4 kernel of
    dot.py ("vnni", "avx2", "neon"; convert.dot_kernels chooses), None: gemm.gemm4; dot8: the int8
    one (PackWeights), None: gemm.gemm."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu_generic.library_dispatch_passes(target)
                + ([Int4Matmuls(tile, kept, dot)] if int4 else [])
                + ([PackWeights(tile, gemv, dot8), relax.transform.DeadCodeElimination()]
                   if pack else [])
                + [relax.transform.FuseOpsByPattern(_patterns(), bind_constants=False,
                                                    annotate_codegen=False),
                   relax.transform.LegalizeOps(fast_exp_legalizations()),
                   relax.transform.AnnotateTIROpPattern(),
                   *([relax.transform.FuseOps()] if fuse else []),
                   relax.transform.FuseTIR(),
                   relax.transform.DeadCodeElimination(),
                   ScheduleMatmul(tile, gemv)]
                + [dlight.ApplyDefaultSchedule(Elementwise())]
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target))
            return seq(mod)

    return _pipeline
