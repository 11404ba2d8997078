"""TVM (x86 build of the rpi4 pipeline) vs ONNX Runtime fp32, side by side in one run.

    python benchmarks/tvm_vs_ort.py [--preset minimind-26m] [--threads 2] [--reps 10]

Protocol: one random-init fp32 model, the same graph (forward_cached, dynamic T and P) exported
once to ONNX and once to TVM (TVM's default unscheduled pipeline, and ours with schedules);
each timed with the same thread count: 1 warmup, `reps` prefills of 64 tokens, 30 decode steps
after it. Rounds alternate between runtimes; prints mean/std ms and the ratio TVM / ORT.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from litelm_edge import backend_tvm, checkpoint, toolchain
from litelm_edge.backend_ort import export_onnx
from litelm_edge.model import Transformer, preset


def ort_times(path: Path, cfg, threads: int, reps: int) -> dict:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    empty = np.zeros((cfg.n_layer, 1, cfg.n_kv_head, 0, cfg.head_dim), np.float32)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 64))
    run = lambda x, k, v: sess.run(None, {"input_ids": x, "past_k": k, "past_v": v})  # noqa: E731
    run(ids, empty, empty)
    pre = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _, k, v = run(ids, empty, empty)
        pre.append((time.perf_counter() - t0) * 1e3)
    dec = []
    for tok in range(32):
        t0 = time.perf_counter()
        _, k, v = run(np.array([[tok]]), k, v)
        dec.append((time.perf_counter() - t0) * 1e3)
    return {"prefill_ms": pre, "decode_ms": dec[2:]}


def tvm_build(py, ckpt: Path, out: Path, schedule: bool, tile=None) -> float:
    out.mkdir(parents=True)
    spec = {"checkpoint": str(ckpt), "out_dir": str(out), "precision": "fp32", "target": "host",
            "cc": None, "host_dir": None, "tile": tile, "schedule": schedule}
    (out / "spec.json").write_text(json.dumps(spec))
    toolchain.run(py, "litelm_edge.tvm_convert", [str(out / "spec.json")])
    return json.loads((out / "convert.json").read_text())["compile_s"]


def tvm_times(py, lib: Path, cfg, threads: int, reps: int) -> dict:
    shape = json.dumps([cfg.n_layer, 1, cfg.n_kv_head, 0, cfg.head_dim])
    r = subprocess.run([str(py), str(ROOT / "benchmarks" / "_tvm_time.py"), str(lib), shape, str(threads),
                        str(reps), str(cfg.vocab_size)], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def row(name: str, t: dict, base: dict | None) -> str:
    p, d = np.array(t["prefill_ms"]), np.array(t["decode_ms"])
    ratio = "" if base is None else (f"{p.mean() / np.mean(base['prefill_ms']):6.2f}x "
                                     f"{d.mean() / np.mean(base['decode_ms']):6.2f}x")
    return f"| {name:<24} | {p.mean():8.1f} ± {p.std():5.1f} | {d.mean():7.2f} ± {d.std():5.2f} | {ratio:>16} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tile", default="8,32", help="matmul register tile MT,NJ of the scheduled build")
    ap.add_argument("--no-default", action="store_true", help="skip TVM's slow unscheduled pipeline")
    a = ap.parse_args()
    import torch
    torch.manual_seed(0)
    cfg = preset(a.preset)
    py = backend_tvm.python()
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        ckpt = checkpoint.save(td / "ckpt", Transformer(cfg).eval(), "{}", {"step": 0})
        export_onnx(checkpoint.load(ckpt)[0], td / "model.onnx", log=lambda m: None)
        tile = [int(x) for x in a.tile.split(",")]
        builds = {"tvm scheduled": tvm_build(py, ckpt, td / "sched", True, tile)}
        if not a.no_default:
            builds["tvm default pipeline"] = tvm_build(py, ckpt, td / "default", False)
        res = {"ort fp32": ort_times(td / "model.onnx", cfg, a.threads, a.reps)}
        for name in builds:  # measured right after ORT, same threads, same machine
            lib = td / ("sched" if name == "tvm scheduled" else "default")
            res[name] = tvm_times(py, lib, cfg, a.threads, a.reps)
    print(f"\n{a.preset}, {a.threads} threads, tile {a.tile}, prefill 64 tokens x {a.reps}, decode 30 steps; ratio = TVM / ORT\n")
    print("| runtime                  | prefill ms (mean ± std) | decode ms (mean ± std) | ratio pre   dec |")
    print("|---|---|---|---|")
    for name, t in res.items():
        print(row(name, t, None if name == "ort fp32" else res["ort fp32"]))
    print("\ncompile s: " + ", ".join(f"{k} {v}" for k, v in builds.items()))


if __name__ == "__main__":
    main()
