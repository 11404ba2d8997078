"""The kernels around the matmuls: the exponentials on a polynomial, injective kernels vectorized.

TVM's default CPU pipeline leaves FuseOps' elementwise kernels as scalar loops, and lowers `exp` to
libm's expf, one call a lane. On the 26M's int4 build (AMD EPYC Zen 5, 2 threads) the SiLU x up
kernel took 11 % of a 64-token prefill and the softmax 5 %; with both changes here the prefill took
0.79x the time and a decode step 0.94x (benchmarks/tvm_ab.py).
"""
from __future__ import annotations

from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight

LANES = 16  # fp32 lanes an elementwise kernel's vector loop: one AVX-512 register, four NEON ones


class Elementwise(dlight.ScheduleRule):
    """A kernel of injective blocks only (SiLU x up, rope, residual adds): every block but the last
    inlined into it, its inner loop vectorized (fast_exp_legalizations' polynomial needs it). Not
    parallel: a thread-pool launch costs more than a decode step's kernel, and a prefill's SiLU
    (64 x 1408, 16 us) gained nothing from a second core. A reshape is left to the VM (a view, not a
    copy)."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or "llvm" != target.kind.name:
            return None
        if relax.analysis.has_reshape_pattern(func):
            return None
        sch = s_tir.Schedule(func)
        infos = dlight.analysis.normalize_prim_func(sch)
        if not infos or not all(b.is_injective() for b in infos):
            return None
        infos = dlight.base.try_inline(sch, infos)
        if len(infos) != 1:
            return None
        loops = sch.get_loops(infos[0].block_rv)
        if not loops:
            return None
        inner = sch.get(loops[-1]).extent
        if isinstance(inner, tirx.IntImm) and int(inner) % LANES == 0:
            _, v = sch.split(loops[-1], [None, LANES])
            sch.vectorize(v)
        return sch


def fast_exp_legalizations() -> dict:
    """LegalizeOps' sigmoid (SiLU's) and softmax on topi.fast_exp (TVM's FastMath: a range reduction
    to 2^n and a degree-5 polynomial, ~1e-7 relative; inputs clamped to +-88.4, so a masked -inf
    gives ~1e-38, not 0): libm's expf is one scalar call a lane, 8.5x the time of the vectorized
    polynomial on a prefill's SiLU (64 x 1408, AMD EPYC Zen 5: 136 vs 16 us)."""
    from tvm import te, topi

    def sigmoid(bb, call):
        def f(x):
            e = topi.fast_exp(topi.negative(x))
            one = tirx.const(1, "float32")
            return te.compute(x.shape, lambda *i: one / (one + e(*i)))
        return bb.call_te(f, call.args[0], primfunc_name_hint="tir_sigmoid")

    def softmax(bb, call):
        return bb.call_te(topi.nn.fast_softmax, call.args[0], call.attrs.axis)

    return {"relax.sigmoid": sigmoid, "relax.nn.softmax": softmax}
