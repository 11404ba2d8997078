"""Where one decode step of an x86 artifact goes: ONNX Runtime's profiler, summed per node type.

Prefills a 64-token prompt, decodes `--steps` tokens with the runner's runtime, and sums the kernel
time of every node per operator type over the decode runs only (the prefill run is left out).

    python benchmarks/ort_profile.py ARTIFACT [ARTIFACT ...] [--threads 2] [--steps 64]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def profile(art: Path, threads: int, steps: int) -> dict:
    from litelm_edge.devices.runner import open_runtime, prefill_last
    from litelm_edge.manifest import read_manifest
    m = read_manifest(art)
    os.environ["LITELM_ORT_PROFILE"] = str(Path(tempfile.mkdtemp(prefix="ortprof-")) / "p")
    try:
        rt = open_runtime(art, m, threads)
    finally:
        del os.environ["LITELM_ORT_PROFILE"]
    tok = int(prefill_last(rt, np.arange(64, dtype=np.int64) % m["model"]["vocab_size"]).argmax())
    for _ in range(steps):
        tok = int(rt.decode(tok).argmax())
    events = json.loads(Path(rt.sess.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-steps:]
    t0 = runs[0]["ts"]
    per_op, nodes, total = defaultdict(float), defaultdict(int), sum(r["dur"] for r in runs)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= t0:
            per_op[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    return {"graph": m["ort"]["graph"], "precision": m["precision"], "run_us": total / steps,
            "per_op_us": {k: v / steps for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
            "nodes_per_step": {k: v // steps for k, v in nodes.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args()
    for art in a.artifacts:
        p = profile(art, a.threads, a.steps)
        kernels = sum(p["per_op_us"].values())
        print(f"\n{art.name} ({p['graph']} graph, {p['precision']}): {p['run_us']:.0f} us a decode step "
              f"(model_run), {kernels:.0f} us in {sum(p['nodes_per_step'].values())} kernels, "
              f"{p['run_us'] - kernels:.0f} us outside kernels; {a.threads} threads")
        print("| op type | nodes | us / step | share of step |\n|---|---|---|---|")
        for op, us in p["per_op_us"].items():
            print(f"| {op} | {p['nodes_per_step'][op]} | {us:.1f} | {100 * us / p['run_us']:.0f}% |")


if __name__ == "__main__":
    main()
