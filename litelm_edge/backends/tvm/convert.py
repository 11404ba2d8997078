"""Checkpoint -> model.so (a Relax VM library), run inside the TVM toolchain venv.

    python -m litelm_edge.backends.tvm.convert SPEC.json

SPEC: {checkpoint, out_dir, precision ("fp32"/"int8"/"int4-b32"/"int4-gptq"), weights (npz of
parameters replacing the checkpoint's, or null), target (a TVM tag string or a target dict), cc
(the C++ compiler that links the target's library), host_dir (null, or a folder for
the same module compiled for this machine: the host-side parity library of a cross build),
tile ([MT, NJ] register tile, or null), gemv (decode GEMV columns a task, or null), schedule
(default true; false = TVM's default unscheduled pipeline, for benchmarks), int8_dot (default true;
false = int8 matrices on gemm.gemm's fp32 widening instead of dot.gemm8_dot, for benchmarks)}.

Writes out_dir/model.so, out_dir/convert.json (timings, weight bytes by dtype), and
host_dir/model.so. The library has two functions, `forward(idx (1, T) int64, pos (1,) int64,
k_0..k_{L-1} (1, nkv, hd, C), v_0..v_{L-1} (1, nkv, C, hd) fp32) -> logits (1, T, V)`, which writes
the step's keys and values into the caches at pos (prefill is pos 0, decode T = 1), and
`forward_last`, the same with the last position's logits (graph.CachedForward; convert.json's
"cache" records the layout).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def host_target():
    """This machine's CPU, named explicitly: LLVM refuses -mcpu=native with TVM's own triple."""
    from tvm.target import Target, codegen
    import os
    return Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu" if os.uname().machine == "x86_64"
                   else "aarch64-linux-gnu", "mcpu": codegen.llvm_get_system_cpu(),
                   "num-cores": os.cpu_count()})


# int4-b32: the int4 layout (blocks of 32, round to nearest: the speed benchmarks' codes); int4-gptq, the
# precision: the same layout on weights GPTQ put on its grid (backends/snap.py)
INT4 = ("int4-b32", "int4-gptq")


def relax_module(checkpoint: str, precision: str, weights: str | None = None):
    """Checkpoint -> (Relax IRModule with functions `forward` (every position's logits) and
    `forward_last` (the last one's: serving's prefill), which share every weight, weight bytes by
    dtype, its cache layout: graph.CACHE_LAYOUT and n_layer). weights: an npz of parameters
    replacing the checkpoint's."""
    import numpy as np
    import torch
    from tvm.relax.frontend.torch import from_exported_program
    from litelm_edge.backends.tvm import cache, graph
    from litelm_edge.pipeline.checkpoint import load
    model, _, _ = load(checkpoint, tokenizer=False)
    for name, w in (np.load(weights).items() if weights else ()):
        model.get_parameter(name).data = torch.from_numpy(w)
    precision = "int4-b32" if precision in INT4 else precision
    graph.prepare(model.float().eval(), precision)
    nbytes: dict[str, int] = {}
    for t in model.buffers():
        name = str(t.dtype).removeprefix("torch.")  # "int8", "float32": the names the build flow checks
        if precision == "int4-b32" and t.dim() == 2 and name == "float32":  # quantised on the graph:
            name, n = "uint8", t.numel() // 2  # a nibble a weight, and a scale a 32
            nbytes["float32"] = nbytes.get("float32", 0) + t.numel() // graph.INT4_BLOCK * 4
        else:
            n = t.numel() * t.element_size()
        nbytes[name] = nbytes.get(name, 0) + n
    with torch.no_grad():
        mod, last = (from_exported_program(graph.export(model, last), custom_convert_map=cache.convert_map(),
                                           unwrap_unit_return_tuple=True) for last in (False, True))
    mod["forward"] = mod["main"].with_attr("global_symbol", "forward")
    last = shared_constants(last["main"], mod["forward"])
    mod["forward_last"] = last.with_attr("global_symbol", "forward_last")
    del mod["main"]
    return cache.AttentionKernels()(mod), nbytes, graph.CACHE_LAYOUT | {"n_layer": model.cfg.n_layer}


def shared_constants(func, like):
    """func with each of its constants replaced by `like`'s constant of the same dtype, shape and
    bytes: the library stores one copy of a weight both functions read."""
    import hashlib
    import tvm
    from tvm import relax

    def key(c):
        if not isinstance(c, tvm.ir.expr.Constant) or not isinstance(c.value, tvm.runtime.Tensor):
            return None
        v = c.value.numpy()
        return v.dtype.str, v.shape, hashlib.sha1(v.tobytes()).hexdigest()

    found = {}

    def note(e):
        if (k := key(e)) is not None:  # a constant (any other expression has no key)
            found.setdefault(k, e)

    relax.analysis.post_order_visit(like, note)

    @relax.expr_functor.mutator
    class Share(relax.PyExprMutator):
        def visit_constant_(self, c):
            return found.get(key(c), c)

    return Share().visit_expr(func)


def dot_kernels(target, tile) -> tuple[str | None, str | None]:
    """dot.py's kernel for the target, and for this machine's parity library of it: the target's own
    where this CPU runs it, else "neon"'s portable TIR (the same integer sums as "vnni": plain
    integer arithmetic LLVM compiles anywhere), so the gate scores the device's arithmetic."""
    from litelm_edge.backends.tvm.dot import kind
    dot = kind(target, tile)
    return dot, (dot if dot is None or kind(host_target(), tile) == dot else "neon")


def compile_to(mod, target, path: Path, cc: str | None, tile, schedule: bool = True, int4: bool = False,
               kept: list | None = None, gemv: int | None = None, fuse: bool = True,
               pack: bool = True, dot: str | None = None, dot8: str | None = None) -> float:
    """Compile (with the scheduled pipeline, or TVM's default one for comparison) and link `path`.
    kept: filled with the [K, N] of the matrices an int4 build made int8 (the layout cannot hold them).
    gemv, fuse, dot, dot8: schedule.pipeline's."""
    import tvm
    from tvm.support import cc as tvm_cc
    from litelm_edge.backends.tvm import schedule as tvm_schedule
    t0 = time.time()
    pipeline = (tvm_schedule.pipeline(target, tile, int4, kept, gemv, fuse, pack, dot, dot8) if schedule
                else "default")
    with tvm.transform.PassContext(opt_level=3, config=tvm_schedule.PASS_CONFIG if schedule else {}):
        ex = tvm.compile(mod, target=target, relax_pipeline=pipeline)
    ex.export_library(str(path), fcompile=tvm_cc.cross_compiler(cc or "g++", options=["-s"]))  # stripped
    return time.time() - t0


def main(spec_path: str) -> int:
    from tvm.target import Target
    from litelm_edge.backends.tvm.gemm import NJ1
    from litelm_edge.backends.tvm.schedule import DEFAULT_TILE
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out_dir"])
    tile = tuple(spec.get("tile") or DEFAULT_TILE)
    gemv = spec.get("gemv") or NJ1
    t0 = time.time()
    mod, nbytes, cache = relax_module(spec["checkpoint"], spec["precision"], spec.get("weights"))
    report = {"import_s": round(time.time() - t0, 2), "weight_bytes": nbytes, "tile": list(tile),
              "gemv": gemv, "cache": cache, "entry_last": "forward_last"}
    target = host_target() if spec["target"] == "host" else Target(spec["target"])
    report["target"] = str(target)
    int4 = spec["precision"] in INT4
    kept: list = []
    dot, host_dot = dot_kernels(target, tile)
    # int8 matrices (the int8 build's, an int4 build's head) on dot.gemm8_dot; "int8_dot": false in the
    # spec keeps gemm.gemm's fp32 widening (benchmarks/tvm_ab.py compares the two)
    dot8, host_dot8 = (dot, host_dot) if spec.get("int8_dot", True) else (None, None)
    report["compile_s"] = round(compile_to(mod, target, out / "model.so", spec.get("cc"), tile,
                                           spec.get("schedule", True), int4, kept, gemv, dot=dot,
                                           dot8=dot8), 2)
    if spec["precision"] != "fp32":
        report["int8_kernel"] = dot8 or "gemm"  # int8 x int8 integer sums, or fp32 widening
    if int4:
        report["int4_kernel"] = dot or "gemm4"  # dot.py's integer dot products, or fp32 widening
        report["int4_as_int8"] = kept  # [K, N] of matrices the int4 layout cannot hold: int8 per channel
        for K, N in kept:  # the size check below: those are int8 bytes and N scales, not nibbles
            nbytes["uint8"] -= K * N // 2
            nbytes["int8"] = nbytes.get("int8", 0) + K * N
            nbytes["float32"] += N * 4 - K * N // 8
        if dot:  # dot.pack_scales: fp16, half the bytes (an fp32 scale a 32 weights: uint8 / 4 bytes)
            nbytes["float32"] -= nbytes["uint8"] // 4
            nbytes["float16"] = nbytes["uint8"] // 8
    so = (out / "model.so").stat().st_size
    if so < sum(nbytes.values()):  # the weights are embedded in the library: it cannot be smaller
        raise RuntimeError(f"model.so is {so} bytes, less than its {sum(nbytes.values())} weight bytes")
    if spec.get("host_dir"):
        host = Path(spec["host_dir"])
        host.mkdir(parents=True, exist_ok=True)
        report["host_target"] = str(host_target())
        t = compile_to(mod, host_target(), host / "model.so", None, tile, True, int4, gemv=gemv, dot=host_dot,
                       dot8=host_dot8)
        report["host_compile_s"] = round(t, 2)
    (out / "convert.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
