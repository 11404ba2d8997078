"""TVM (x86 build of the rpi4 pipeline) vs ONNX Runtime fp32, side by side in one run.

    python benchmarks/tvm_vs_ort.py [--preset minimind-26m] [--threads 2] [--rounds 8]

Protocol: one random-init fp32 model, the same graph (forward_cached, dynamic T and P) exported
once to ONNX and once to TVM (TVM's default unscheduled pipeline, and ours with schedules), all
with the same thread count. Rounds interleave the runtimes (the order rotates each round), so a
burst of load on this shared machine hits each about equally: a round is 1 warmup prefill, `reps`
prefills of 64 tokens, then `steps` decode steps on that cache (the default pipeline, ~2 s a
prefill, does 1 prefill a round). Prints mean ± std and median ms; the ratio TVM / ORT is of the
medians, with its range over the rounds (each round's median over the neighbouring ORT round's).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from litelm_edge import toolchain  # noqa: E402
from litelm_edge.backends.ort.build import export_onnx  # noqa: E402
from litelm_edge.backends.ort.runtime import OrtRuntime  # noqa: E402
from litelm_edge.backends.tvm import build as tvm_backend  # noqa: E402
from litelm_edge.devices.runner import round_ms  # the one round protocol, ORT and TVM alike  # noqa: E402
from litelm_edge.pipeline import checkpoint  # noqa: E402
from litelm_edge.pipeline.model import Transformer, preset  # noqa: E402


class TvmRunner:
    """The TVM libraries in one process of the TVM venv (benchmarks/_tvm_time.py), a round each."""

    def __init__(self, py, libs: list[Path], cfg, threads: int):
        shape = json.dumps([cfg.n_layer, 1, cfg.n_kv_head, 0, cfg.head_dim])
        self.proc = subprocess.Popen([str(py), str(ROOT / "benchmarks" / "_tvm_time.py"), shape, str(threads),
                                      str(cfg.vocab_size), *map(str, libs)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=toolchain.src_env())
        while self.proc.stdout.readline().strip() != "ready":
            if self.proc.poll() is not None:
                raise RuntimeError("benchmarks/_tvm_time.py failed to load the TVM libraries")

    def round(self, i: int, reps: int, steps: int) -> dict:
        self.proc.stdin.write(f"{i} {reps} {steps}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def tvm_build(py, ckpt: Path, out: Path, schedule: bool, tile=None) -> float:
    out.mkdir(parents=True)
    spec = {"checkpoint": str(ckpt), "out_dir": str(out), "precision": "fp32", "target": "host",
            "cc": None, "host_dir": None, "tile": tile, "gemv": x86_setting("gemv"), "schedule": schedule}
    (out / "spec.json").write_text(json.dumps(spec))
    toolchain.run(py, "litelm_edge.backends.tvm.convert", [str(out / "spec.json")])
    return json.loads((out / "convert.json").read_text())["compile_s"]


def x86_setting(key: str):
    """targets/x86-tvm.toml's [tvm] KEY (tile, gemv), or None."""
    import tomllib
    return tomllib.loads((ROOT / "targets" / "x86-tvm.toml").read_text())["tvm"].get(key)


def x86_tile() -> list[int]:
    return x86_setting("tile")


def interleaved(ort: OrtRuntime, ids, tvm: TvmRunner, names: list[str], a) -> dict:
    """{name: [round, ...]} for "ort fp32" and each TVM library, rounds interleaved."""
    runs = ["ort fp32", *names]
    res = {name: [] for name in runs}
    for r in range(a.rounds):
        for j in range(len(runs)):
            name = runs[(r + j) % len(runs)]  # rotate who goes first
            reps = 1 if name == "tvm default pipeline" else a.reps
            res[name].append(round_ms(ort, ids, reps, a.steps) if name == "ort fp32"
                             else tvm.round(names.index(name), reps, a.steps))
    return res


def row(name: str, rounds: list[dict], base: list[dict] | None) -> str:
    cols = []
    for key in ("prefill_ms", "decode_ms"):
        x = np.concatenate([r[key] for r in rounds])
        cols.append(f"{x.mean():8.2f} ± {x.std():6.2f} | {np.median(x):8.2f}")
    ratio = ""
    if base is not None:
        for key in ("prefill_ms", "decode_ms"):
            med = np.median(np.concatenate([r[key] for r in rounds]))
            per = [np.median(r[key]) / np.median(b[key]) for r, b in zip(rounds, base, strict=True)]
            ratio += f" {med / np.median(np.concatenate([b[key] for b in base])):5.2f}x ({min(per):.2f}-{max(per):.2f}) |"
    return f"| {name:<20} | {cols[0]} | {cols[1]} |{ratio}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="timed prefills a round")
    ap.add_argument("--steps", type=int, default=16, help="timed decode steps a round")
    ap.add_argument("--tile", default=None,
                    help="matmul register tile MT,NJ (default: targets/x86-tvm.toml's)")
    ap.add_argument("--no-default", action="store_true", help="skip TVM's slow unscheduled pipeline")
    a = ap.parse_args()
    import torch
    torch.manual_seed(0)
    cfg = preset(a.preset)
    py = tvm_backend.python()
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        ckpt = checkpoint.save(td / "ckpt", Transformer(cfg).eval(), "{}", {"step": 0})
        export_onnx(checkpoint.load(ckpt)[0], td / "model.onnx", log=lambda m: None)
        tile = [int(x) for x in a.tile.split(",")] if a.tile else x86_tile()
        builds = {"tvm scheduled": tvm_build(py, ckpt, td / "sched", True, tile)}
        if not a.no_default:
            builds["tvm default pipeline"] = tvm_build(py, ckpt, td / "default", False)
        names = list(builds)
        libs = [td / ("sched" if n == "tvm scheduled" else "default") for n in names]
        model = {k: getattr(cfg, k) for k in ("n_layer", "n_kv_head", "head_dim", "n_embd", "n_head")}
        ort = OrtRuntime(Path(td) / "model.onnx", {"model": model}, a.threads)
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, 64)  # the ids _tvm_time.py times TVM on
        tvm = TvmRunner(py, libs, cfg, a.threads)
        try:
            res = interleaved(ort, ids, tvm, names, a)
        finally:
            tvm.close()
    print(f"\n{a.preset}, {a.threads} threads, tile {tile}, {a.rounds} interleaved rounds of "
          f"1 warmup + {a.reps} prefills of 64 tokens + {a.steps} decode steps; ratio = TVM / ORT of the "
          "medians (range over rounds)\n")
    print("| runtime | prefill ms mean ± std | median | decode ms mean ± std | median | ratio prefill | "
          "ratio decode |")
    print("|---|---|---|---|---|---|---|")
    for name in ["ort fp32", "tvm default pipeline", "tvm scheduled"]:
        if name in res:
            print(row(name, res[name], None if name == "ort fp32" else res["ort fp32"]))
    print("\ncompile s: " + ", ".join(f"{k} {v}" for k, v in builds.items()))


if __name__ == "__main__":
    main()
