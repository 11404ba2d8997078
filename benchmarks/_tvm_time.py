"""Times a TVM library in the TVM venv (called by tvm_vs_ort.py): prefill-64 and decode, ms."""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "litelm_edge"))
from device_runner import TvmRuntime  # noqa: E402  (one file, numpy + runtime only)


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
