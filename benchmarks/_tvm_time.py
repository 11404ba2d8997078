"""Times TVM libraries in the TVM venv, one round per request (driven by tvm_vs_ort.py).

    python _tvm_time.py CACHE_SHAPE THREADS VOCAB LIB_DIR [LIB_DIR ...]

Loads every library, prints "ready", then for each stdin line "I REPS STEPS" runs one round on
library I (the runner's `round_ms`) and prints its JSON: prefill-64 and decode times, ms. A library
with convert.json's "cache" runs with per-layer caches, one without it stacked ones. Runs in
the TVM venv with the litelm_edge sources on PYTHONPATH (toolchain.src_env).
"""
import json
import sys
from pathlib import Path

import numpy as np

from litelm_edge.backends.tvm.runtime import TvmRuntime
from litelm_edge.devices.runner import round_ms


def manifest(lib_dir: Path, cache_shape: list) -> dict:
    """The runtime's manifest section: the cache layout from the library's convert.json (none in
    one built before the per-layer cache: the stacked layout), and its last-position entry (none in
    one built before 2026-12-07: the prefill computes every position's logits)."""
    conv = lib_dir / "convert.json"
    report = json.loads(conv.read_text()) if conv.is_file() else {}
    return {"tvm": {"library": "model.so", "cache_shape": cache_shape}
            | {k: report[k] for k in ("cache", "entry_last") if report.get(k)}}


def main(cache_shape, threads, vocab, *lib_dirs):
    rts = [TvmRuntime(Path(d) / "model.so", manifest(Path(d), json.loads(cache_shape)), int(threads))
           for d in lib_dirs]
    ids = np.random.default_rng(0).integers(0, int(vocab), 64)
    print("ready", flush=True)
    for line in sys.stdin:
        i, reps, steps = map(int, line.split())
        print(json.dumps(round_ms(rts[i], ids, reps, steps)), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
