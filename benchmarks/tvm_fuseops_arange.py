"""Minimal reproduction of a TVM 0.27 FuseTIR failure, for an upstream report (docs/rpi4.md).

    python benchmarks/tvm_fuseops_arange.py            # in the TVM venv: crashes in FuseTIR
    python benchmarks/tvm_fuseops_arange.py --opaque   # with the workaround: ok

A fused group holding `arange(0, n)` (its only input the symbolic length n, so FuseOps passes n
as a shape argument) next to an op on another symbolic scalar p (a PrimValue argument) makes
FuseTIR fail in RenewDefs: `Check failed: (VarRemapGet(source) == nullptr) is false`. Either op
alone in the group fuses fine; so does arange of a length the group reads from a tensor.
Our model's rope positions were exactly this, arange(0, T) + P with P the cached length, until
the in-place cache (2026-12-07) made P data; schedule.ArangeOpaque, the workaround, went with it.
Plain TVM only: no litelm_edge import, so the file can be attached to the report as it is.
"""
import sys

import tvm
from tvm import relax, tirx
from tvm.script import relax as R
from tvm.script import tirx as T


@tvm.script.ir_module
class Mod:
    @R.function
    def main(idx: R.Tensor((1, "n"), "int64"), k: R.Tensor(("p", 4), "float32")):
        n, p = T.int64(), T.int64()
        with R.dataflow():
            pos = R.arange(0, n, 1, dtype="int64")  # (n,): positions of the new tokens
            pos = R.add(pos, R.prim_value(p))       # + p, the cached length
            y = R.astype(pos, "float32")
            R.output(y)
        return y


@tvm.transform.module_pass(opt_level=0, name="ArangeOpaque")
def arange_opaque(mod, _ctx):
    """The workaround: a kernel that reads no tensor is opaque to FuseOps (kOpaque = 8)."""
    for gv, f in mod.functions.items():
        if not isinstance(f, tirx.PrimFunc):
            continue
        if sum(isinstance(p.ty, tirx.buffer.BufferType) for p in f.params) == 1:  # its output only
            mod[gv] = f.with_attr("op_pattern", 8)
    return mod


if __name__ == "__main__":
    passes = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern()]
    passes += [arange_opaque] if "--opaque" in sys.argv else []
    mod = tvm.transform.Sequential(passes + [relax.transform.FuseOps()])(Mod)
    print(mod["main"])  # one group: fused_arange_add_cast(p, R.shape([n]))
    relax.transform.FuseTIR()(mod)  # TVM 0.27.0: InternalError in RenewDefs
    print(f"FuseTIR ok (TVM {tvm.__version__})")
