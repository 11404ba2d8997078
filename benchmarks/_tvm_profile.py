"""Where a decode step (or, --prefill, a prefill) of a TVM library goes, by kernel: run in the TVM venv.

    python benchmarks/_tvm_profile.py LIB_DIR [LIB_DIR ...] [--steps 20] [--context 64] [--prefill] [--threads 2]
    (PYTHONPATH = the repository; benchmarks/rpi4_vs_llamacpp.py --work DIR keeps the libraries)

TVM 0.27's Relax VM has no profiler object any more; its instrument hook (`set_instrument`) is
called before and after every VM call, so the time between the two is one kernel's (or one VM
builtin's) wall time plus part of the hook's own Python overhead (converting the call's arguments
for the hook: more arguments, more overhead). That part swamps a VM builtin (a step with the hook
takes ~5x the untimed one on the 26M: ~1,400 builtin calls), so the raw times made the cheap
builtins look like 44 % of the step (issue 26's profiles before 2026-12-07 read them so; a build
with half the builtins, T fixed at 1, decoded no faster). So only kernels are timed: each entry
less, per call, the mean time of the cheapest call (the hook's share inside the window, about);
the VM builtins, its dispatch and the thread pool's launches are one row, the untimed step less
the kernels.
Timings on a loaded machine are noisy: read the shares, not the ms.
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def profile(lib_dir: Path, steps: int, context: int, prefill: bool = False) -> tuple[float, float, dict]:
    """(the untimed call's ms, the hook's ms a call, {kernel: (calls, ms)}) of a decode step after
    `context` tokens, or of the prefill of `context` tokens."""
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")  # TVM_NUM_THREADS: set by main, before the import
    import tvm
    from tvm.runtime import vm as tvm_vm
    spec = json.loads((lib_dir / "spec.json").read_text())  # written by the benchmark's build
    from litelm_edge.pipeline.checkpoint import read_config
    c = read_config(Path(spec["checkpoint"]))[0]
    vm = tvm_vm.VirtualMachine(tvm.runtime.load_module(str(lib_dir / "model.so")), tvm.cpu())
    from _tvm_time import manifest  # beside this script
    from litelm_edge.backends.tvm.runtime import cache_layout, empty_caches
    meta = manifest(lib_dir, [c.n_layer, 1, c.n_kv_head, 0, c.head_dim])["tvm"]
    # a prefill: serving's, the last position's logits where the library has it
    f = vm[meta.get("entry_last", "forward") if prefill else "forward"]
    t = tvm.runtime.tensor
    ids = t(np.random.default_rng(0).integers(0, c.vocab_size, (1, context)))
    if cache_layout(meta) == "in place":  # every decode step writes position `context` again
        kv = [t(x) for x in empty_caches(meta, context + 1)]
        f(ids, t(np.array([0])), *kv)
        args = [ids, t(np.array([0])), *kv] if prefill else [t(np.array([[1]])), t(np.array([context])), *kv]
    else:  # the caches a call returns are one position longer: decode from the prefill's, unreplaced
        args = [ids, *map(t, empty_caches(meta))]
        _, *kv = f(*args)
        args = args if prefill else [t(np.array([[1]], np.int64)), *kv]
    for _ in range(3):
        f(*args)
    t0 = time.perf_counter()
    for _ in range(steps):
        f(*args)
    plain = (time.perf_counter() - t0) / steps * 1e3
    acc, start = {}, {}

    def hook(_func, name, before, _ret, *_args):
        if before:
            start["t"] = time.perf_counter()
        else:
            a = acc.setdefault(name, [0, 0.0])
            a[0] += 1
            a[1] += time.perf_counter() - start["t"]
        return 0  # VMInstrumentReturnKind.kNoOp
    vm.set_instrument(hook)
    for _ in range(steps):
        f(*args)
    h = min(s / cnt for cnt, s in acc.values()) * 1e3  # ms: the cheapest call's mean, ~all hook
    return plain, h, {n: (cnt / steps, max(0.0, s / steps * 1e3 - h * cnt / steps))
                      for n, (cnt, s) in acc.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("libs", nargs="+", type=Path)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--prefill", action="store_true", help="profile the prefill of --context tokens")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    # as the runner sets it (TvmRuntime): unset, TVM's pool took 5.3 us a parallel launch here, set 0.8
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    what = f"prefill of {a.context}" if a.prefill else "decode step"
    for lib in a.libs:
        plain, h, rows = profile(lib, a.steps, a.context, a.prefill)
        builtins = sum(c for n, (c, _) in rows.items() if n.startswith("vm.builtin"))
        rows = {n: r for n, r in rows.items() if not n.startswith("vm.builtin")}  # the kernels
        matmul = sum(ms for n, (_, ms) in rows.items() if "matmul" in n or "gemm" in n)
        rows["(VM builtins, dispatch, thread-pool launches: the untimed step less the kernels)"] = (
            builtins, max(0.0, plain - sum(ms for _, ms in rows.values())))
        print(f"\n{lib.name}: {what} {plain:.3f} ms untimed; hook {1e3 * h:.2f} us a call subtracted; "
              f"{sum(c for c, _ in rows.values()) - builtins:.0f} kernel calls, "
              f"{builtins:.0f} VM builtin calls; "
              f"matmuls {100 * matmul / plain:.0f}% of it")
        print("| kernel | calls | ms | share of the untimed call |\n|---|---|---|---|")
        for n, (cnt, ms) in sorted(rows.items(), key=lambda x: -x[1][1])[:a.top]:
            print(f"| {n} | {cnt:.0f} | {ms:.3f} | {100 * ms / plain:.1f}% |")


if __name__ == "__main__":
    main()
