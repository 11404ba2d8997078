"""Times a TVM library in the TVM venv (called by tvm_vs_ort.py): prefill-64 and decode, ms."""
import json
import sys
import time
from pathlib import Path

import numpy as np


def _runner():
    """litelm_edge/device_runner.py by path: this runs in the TVM venv, where litelm_edge is not
    installed, and the runner is one file needing only numpy and the runtime."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "litelm_edge" / "device_runner.py"
    spec = importlib.util.spec_from_file_location("device_runner", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TvmRuntime = _runner().TvmRuntime


def main(lib_dir, cache_shape, threads, reps, vocab):
    rt = TvmRuntime(Path(lib_dir), {"tvm": {"library": "model.so", "cache_shape": json.loads(cache_shape)}}, int(threads))
    ids = np.random.default_rng(0).integers(0, int(vocab), 64)
    rt.prefill(ids)  # warmup
    pre = []
    for _ in range(int(reps)):
        t0 = time.perf_counter()
        rt.prefill(ids)
        pre.append((time.perf_counter() - t0) * 1e3)
    dec = []
    for tok in range(32):
        t0 = time.perf_counter()
        rt.decode(tok)
        dec.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"prefill_ms": pre, "decode_ms": dec[2:]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
