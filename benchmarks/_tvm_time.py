"""Times TVM libraries in the TVM venv, one round per request (driven by tvm_vs_ort.py).

    python _tvm_time.py CACHE_SHAPE THREADS VOCAB LIB_DIR [LIB_DIR ...]

Loads every library, prints "ready", then for each stdin line "I REPS STEPS" runs one round on
library I (the protocol of `round_ms`) and prints its JSON: prefill-64 and decode times, ms.
"""
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


def round_ms(rt, ids, reps: int, steps: int) -> dict:
    """1 warmup prefill, `reps` timed prefills, then `steps` timed decode steps on that cache."""
    rt.prefill(ids)
    pre = []
    for _ in range(reps):
        t0 = time.perf_counter()
        rt.prefill(ids)
        pre.append((time.perf_counter() - t0) * 1e3)
    dec = []
    for tok in range(steps):
        t0 = time.perf_counter()
        rt.decode(tok)
        dec.append((time.perf_counter() - t0) * 1e3)
    return {"prefill_ms": pre, "decode_ms": dec}


def main(cache_shape, threads, vocab, *lib_dirs):
    TvmRuntime = _runner().TvmRuntime
    manifest = {"tvm": {"library": "model.so", "cache_shape": json.loads(cache_shape)}}
    rts = [TvmRuntime(Path(d), manifest, int(threads)) for d in lib_dirs]
    ids = np.random.default_rng(0).integers(0, int(vocab), 64)
    print("ready", flush=True)
    for line in sys.stdin:
        i, reps, steps = map(int, line.split())
        print(json.dumps(round_ms(rts[i], ids, reps, steps)), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
