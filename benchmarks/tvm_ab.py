"""Two or more TVM libraries of one checkpoint against each other (a schedule change, before / after).

    python benchmarks/tvm_ab.py LIB_DIR LIB_DIR [...] [--threads 1] [--rounds 8] [--steps 64]
    (LIB_DIR: a folder with model.so and spec.json, e.g. rpi4_vs_llamacpp.py's --work libraries)

Protocol: every library loaded in one process of the TVM venv (benchmarks/_tvm_time.py); each
round runs each library once, the order rotated each round, so a burst of load on a shared
machine hits each about equally: 1 warmup prefill, `reps` prefills of 64 tokens, `steps` decode
steps after them (the device runner's `round_ms`). Prints min / median / max over rounds of each
round's median, and each library's per-round ratio to the first one (the baseline).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from rpi4_vs_llamacpp import fmt, summary
from tvm_vs_ort import TvmRunner

from litelm_edge.backends.tvm import build as tvm_backend
from litelm_edge.pipeline.checkpoint import load


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("libs", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args()
    ckpt = json.loads((a.libs[0] / "spec.json").read_text())["checkpoint"]
    runner = TvmRunner(tvm_backend.python(), a.libs, load(ckpt, tokenizer=False)[0].cfg, a.threads)
    res = {i: [] for i in range(len(a.libs))}  # [(prefill ms, decode tok/s)] a round
    try:
        for r in range(a.rounds):
            for j in range(len(a.libs)):
                i = (r + j) % len(a.libs)
                out = runner.round(i, a.reps, a.steps)
                res[i].append((float(np.median(out["prefill_ms"])),
                               1e3 / float(np.median(out["decode_ms"]))))  # (ms, tok/s)
            print(f"round {r + 1}/{a.rounds}: decode tok/s " + ", ".join(f"{v[-1][1]:.1f}" for v in res.values()),
                  flush=True)
    finally:
        runner.close()
    print(f"\n{a.threads} threads; {a.rounds} interleaved rounds x {a.reps} prefills of 64 + "
          f"{a.steps} decode steps")
    print("| library | decode tok/s min / median / max | vs first, per round | prefill-64 ms "
          "| prefill speed vs first |")
    print("|---|---|---|---|---|")
    for i, lib in enumerate(a.libs):
        rs, base = res[i], res[0]
        dec = fmt(summary([x[1] / y[1] for x, y in zip(rs, base, strict=True)]), 2)
        pre = fmt(summary([y[0] / x[0] for x, y in zip(rs, base, strict=True)]), 2)
        print(f"| {lib.name} | {fmt(summary([x[1] for x in rs]), 1)} | {dec}x | "
              f"{fmt(summary([x[0] for x in rs]), 1)} | {pre}x |")


if __name__ == "__main__":
    main()
