"""The rpi4 pipeline's x86 twin (TVM, `--target x86-tvm`: the same schedules compiled for this CPU)
against llama.cpp on the same weights: decode and prefill-64 ratios, interleaved rounds, one run.

    python benchmarks/rpi4_vs_llamacpp.py [--preset minimind-26m] [--threads 2] [--rounds 8]
    python benchmarks/rpi4_vs_llamacpp.py --checkpoint CKPT            # trained weights (needs a tokenizer)
    python benchmarks/rpi4_vs_llamacpp.py --precisions int8 --llama q8_0  # one pair

Protocol: one checkpoint (untrained preset by default: speed does not depend on the values) goes
through our TVM convert (target "host": this CPU's -mcpu, the rpi4 target's schedules and the
x86-tvm target's tile and GEMV width) once per precision, and through llama.cpp's converter and llama-quantize
(f16, q8_0, q4_0; benchmarks/_llamacpp.py). Each round runs every engine once, the order rotated
each round so a burst of load on a shared machine hits each about equally: TVM a round is 1 warmup
prefill, `reps` prefills of p tokens and a greedy decode of n tokens after them (the device
runner's `round_ms`, in the TVM venv); llama.cpp a round is `llama-bench -p p` and `-n n -d p`,
`reps` repetitions each. A round gives one median per engine; the table shows min / median / max
over rounds, and each pair's ratio per round (both engines of a round see the same drift).
Pairs: TVM fp32 - llama.cpp f16 (llama.cpp's fastest float), int8 - q8_0, int4-gptq - q4_0. int4-gptq
is built here from round-to-nearest codes in its layout (no calibration run): GPTQ chooses other codes,
not another kernel, so the speed is the same.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import _llamacpp as llama
from tvm_vs_ort import TvmRunner, x86_setting, x86_tile

from litelm_edge.backends.tvm import PRECISIONS

BITS = {p.name: p.bits for p in PRECISIONS}  # our precision -> bits a weight
PAIRS = {32: "f16", 8: "q8_0", 4: "q4_0"}  # bits -> llama.cpp's type of the same class


def tvm_build(py, ckpt: Path, out: Path, precision: str, tile, gemv: int | None) -> Path:
    """convert.py for this CPU (kept in --work when already there)."""
    from litelm_edge import toolchain
    if not (out / "model.so").is_file():
        out.mkdir(parents=True, exist_ok=True)
        spec = {"checkpoint": str(ckpt), "out_dir": str(out), "precision": precision, "target": "host",
                "cc": None, "host_dir": None, "tile": tile, "gemv": gemv}
        (out / "spec.json").write_text(json.dumps(spec))
        toolchain.run(py, "litelm_edge.backends.tvm.convert", [str(out / "spec.json")])
    return out


def summary(vals) -> dict:
    a = np.asarray(vals, float)
    return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}


def fmt(s: dict, nd: int = 0) -> str:
    return f"{s['min']:,.{nd}f} / {s['median']:,.{nd}f} / {s['max']:,.{nd}f}"


def one_round(name: str, kind: str, h, a, ids) -> tuple[float, float]:
    """-> (median prefill ms, median decode tok/s) of one round of one engine."""
    if kind == "tvm":
        r = h.round(ids, a.reps, a.n)
        return float(np.median(r["prefill_ms"])), 1e3 / float(np.median(r["decode_ms"]))
    r = llama.bench(h, a.threads, a.p, a.n, a.reps)
    return float(np.median(r["prefill_ms"])), float(np.median(r["decode_tok_s"]))


def table(rounds: dict, sizes: dict) -> list[str]:
    out = ["| engine | weights MB | decode tok/s min / median / max | prefill-64 ms min / median / max "
           "| decode vs llama.cpp, per round min / median / max | prefill speed vs llama.cpp, per round |",
           "|---|---|---|---|---|---|"]
    for name, rs in rounds.items():
        ref = f"llama.cpp {PAIRS[BITS[name.split()[-1]]]}" if name.startswith("tvm") else None
        dec, pre = summary([r[1] for r in rs]), summary([r[0] for r in rs])
        ratios = ["", ""]
        if ref in rounds:
            ratios = [fmt(summary([x[1] / y[1] for x, y in zip(rs, rounds[ref], strict=True)]), 2) + "x",
                      fmt(summary([y[0] / x[0] for x, y in zip(rs, rounds[ref], strict=True)]), 2) + "x"]
        out.append(f"| {name} | {sizes[name]:.1f} | {fmt(dec)} | {fmt(pre, 1)} | {ratios[0]} | {ratios[1]} |")
    return out


def engines(a, work: Path) -> tuple[dict, dict, list]:
    """{name: (kind, handle)}, {name: weight MB}, [TvmRunner] (to close)."""
    from litelm_edge.backends.tvm import build as tvm_backend
    from x86_vs_llamacpp import untrained_checkpoint, weights_id
    ck = a.checkpoint or untrained_checkpoint(a.preset, work)[0]
    wid = weights_id(ck)
    eng, sizes = {}, {}
    for t in filter(None, a.llama.split(",")):
        g = (llama.convert(ck, t, work / wid / "gguf", log=print) if t in ("f32", "f16")
             else llama.quantize(llama.convert(ck, "f32", work / wid / "gguf", log=print), t))
        eng[f"llama.cpp {t}"], sizes[f"llama.cpp {t}"] = ("llama", g), g.stat().st_size / 1e6
    precs = [p for p in a.precisions.split(",") if p]
    if precs:
        py = tvm_backend.python()
        tile = [int(x) for x in a.tile.split(",")] if a.tile else x86_tile()
        gemv = a.gemv or x86_setting("gemv")
        name = f"{'x'.join(map(str, tile))}-gemv{gemv}"
        libs = [tvm_build(py, ck, work / wid / f"tvm-{p}-{name}", p, tile, gemv) for p in precs]
        from litelm_edge.pipeline.checkpoint import load
        cfg = load(ck, tokenizer=False)[0].cfg
        runner = TvmRunner(py, libs, cfg, a.threads)
        for i, (p, lib) in enumerate(zip(precs, libs, strict=True)):
            eng[f"tvm {p}"] = ("tvm", _Lib(runner, i))
            sizes[f"tvm {p}"] = sum(tvm_backend.embedded_weight_bytes(lib / "model.so").values()) / 1e6
    return eng, sizes, [runner] if precs else []


class _Lib:
    """One library of the shared TVM process."""

    def __init__(self, runner: TvmRunner, i: int):
        self.runner, self.i = runner, i

    def round(self, _ids, reps: int, steps: int) -> dict:
        return self.runner.round(self.i, reps, steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--precisions", default=",".join(p.name for p in PRECISIONS))
    ap.add_argument("--llama", default="f16,q8_0,q4_0", help="llama.cpp types ('' leaves llama.cpp out)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("-p", type=int, default=64, help="prefill tokens (TVM: _tvm_time.py's 64 ids)")
    ap.add_argument("-n", type=int, default=64, help="decode steps after the prefill")
    ap.add_argument("--tile", help="matmul register tile MT,NJ (default: targets/x86-tvm.toml's)")
    ap.add_argument("--gemv", type=int, help="decode GEMV columns a task (default: targets/x86-tvm.toml's)")
    ap.add_argument("--work", type=Path, help="folder for checkpoints, GGUF files and libraries, reused")
    ap.add_argument("--out", type=Path, help="JSON of every round")
    a = ap.parse_args()
    if a.p != 64:
        sys.exit("error: -p must be 64 (the TVM timer's prompt); leave it out")
    work = a.work or Path(tempfile.mkdtemp(prefix="rpi4-vs-llamacpp-"))
    eng, sizes, runners = engines(a, work)
    names = list(eng)
    rounds = {k: [] for k in names}
    try:
        for name in names:  # warmup: a first prefill, pages of the weights faulted in
            if eng[name][0] == "tvm":
                eng[name][1].round(None, 1, 4)
        for r in range(a.rounds):
            for j in range(len(names)):
                name = names[(r + j) % len(names)]
                rounds[name].append(one_round(name, *eng[name], a, None))
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1][1]:.0f} tok/s" for k, v in rounds.items()), flush=True)
    finally:
        for rn in runners:
            rn.close()
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.split("load average:")[-1].strip()
    print(f"\n{cpu or platform.processor()}; {a.threads} threads; {a.rounds} interleaved rounds (order rotated) x "
          f"{a.reps} reps; prefill {a.p}, decode {a.n} after it; load average at the end: {load}")
    print("\n".join(table(rounds, sizes)))
    if a.out:
        a.out.write_text(json.dumps({"rounds": rounds, "sizes_mb": sizes, "cpu": cpu, "load": load,
                                     "args": {k: str(v) for k, v in vars(a).items()}}, indent=1))


if __name__ == "__main__":
    main()
