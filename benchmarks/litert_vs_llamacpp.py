"""LiteRT (the android artifact) against llama.cpp on the same CPU and weights, at equal bits.

    python benchmarks/litert_vs_llamacpp.py CHECKPOINT PRECISION=ARTIFACT_DIR... \
        [--rounds 5] [--iters 20] [--threads 2] [--prompt 64] [--gen 128] [--json OUT.json]

e.g. `int8=runs/a/int8 int4-b32=runs/a/int4`. llama.cpp is built from the llama-cpp-python sdist
(benchmarks/_llamacpp.py, cached under ~/.cache/litelm-edge/llama.cpp/); the checkpoint is
converted to GGUF and quantized to the type of equal bits (EQUAL_BITS). Protocol: `rounds`
interleaved rounds; in each, for every precision, LiteRT runs the device runner's round_ms (`iters`
prefills of a `prompt`-token prompt, ms per call, then a greedy decode of `gen` tokens), then llama-bench
times the same (-p prompt; -n gen -d prompt; 2 repetitions). Each round gives one ratio per phase
(LiteRT speed / llama.cpp speed, > 1: LiteRT faster); min / median / max over rounds are printed.
A warmup round is run first and not counted.

Every figure is of THIS machine (the host): an android artifact timed on x86 says nothing
certain about a phone, whose figure comes from `litelm-edge bench --remote` on the phone.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _llamacpp

from litelm_edge.backends.litert import BACKEND as LITERT

# LiteRT precision -> llama.cpp type of the same bits per weight. q4_0 is INT4 in blocks of 32
# with an fp16 scale, exactly int4-b32; q8_0 is INT8 in blocks of 32 (LiteRT int8: per channel).
# Every row of the LiteRT table by its bits: a new precision needs no edit here.
EQUAL_BITS = {p.name: {32: "f32", 8: "q8_0", 4: "q4_0"}[p.bits] for p in LITERT.precisions}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def litert_round(rt, prompt: np.ndarray, iters: int, gen: int) -> dict:
    """The runner's round (round_ms: 1 warmup prefill, `iters` timed prefills, a greedy decode of
    `gen` tokens): prefill ms samples and decode tok/s of the whole reply."""
    from litelm_edge.devices.runner import round_ms
    r = round_ms(rt, prompt, iters, gen)
    return {"prefill_ms": r["prefill_ms"], "decode_tok_s": 1e3 * len(r["decode_ms"]) / sum(r["decode_ms"])}


def ggufs(checkpoint: Path, precisions: list[str], log) -> dict:
    training = checkpoint / "training.json"  # the weights' hash names the cache folder
    key = json.loads(training.read_text()).get("model_sha256", "")[:12] if training.is_file() else ""
    work = _llamacpp.CACHE / "gguf" / (key or checkpoint.resolve().name)
    f32 = _llamacpp.convert(checkpoint, "f32", work, log)
    return {p: f32 if EQUAL_BITS[p] == "f32" else _llamacpp.quantize(f32, EQUAL_BITS[p], log) for p in precisions}


def spread(xs: list[float]) -> dict:
    return {"min": float(np.min(xs)), "median": float(np.median(xs)), "max": float(np.max(xs))}


def run(a) -> dict:
    from litelm_edge.backends.litert.runtime import LiteRTRuntime
    arts = dict(x.split("=", 1) for x in a.artifacts)
    unknown = set(arts) - set(EQUAL_BITS)
    if unknown:
        raise SystemExit(f"unknown precision(s) {sorted(unknown)}, have: {', '.join(EQUAL_BITS)}")
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if a.llama_args:  # e.g. --repack 0 where AMX tile loads trap (a VM without AMX state)
        run_ = _llamacpp._run
        _llamacpp._run = lambda cmd, *k, **kw: run_(cmd + a.llama_args.split() if "llama-bench" in str(cmd[0])
                                                    else cmd, *k, **kw)
    models = ggufs(Path(a.checkpoint), list(arts), log)
    rts = {p: LiteRTRuntime(Path(d) / "model.tflite", {}, a.threads) for p, d in arts.items()}
    prompt = np.random.default_rng(0).integers(0, 256, a.prompt)  # ids present in every vocab
    rows = {p: {"litert": [], "llama": []} for p in arts}
    for r in range(a.rounds + 1):  # round 0 warms both engines up and is dropped
        for p in arts:
            lt = litert_round(rts[p], prompt, a.iters, a.gen)
            ll = _llamacpp.bench(models[p], a.threads, a.prompt, a.gen, reps=2, log=log)
            if r:
                rows[p]["litert"].append(lt)
                rows[p]["llama"].append(ll)
        log(f"round {r}/{a.rounds} done, load {os.getloadavg()[0]:.1f}")
    out = {"cpu": cpu_name(), "threads": a.threads, "prompt": a.prompt, "gen": a.gen, "rounds": a.rounds,
           "iters": a.iters, "machine": "host (not a phone)", "llama_cpp": _llamacpp.VERSION,
           "llama_args": a.llama_args, "results": {}}
    for p, rr in rows.items():
        pre = [x for lt in rr["litert"] for x in lt["prefill_ms"]]
        res = {"litert_prefill_ms": {"p50": float(np.percentile(pre, 50)),
                                     "p99": float(np.percentile(pre, 99)), "n": len(pre)},
               "litert_decode_tok_s": spread([lt["decode_tok_s"] for lt in rr["litert"]]),
               "llama_type": EQUAL_BITS[p],
               "llama_prefill_ms": spread([x for ll in rr["llama"] for x in ll["prefill_ms"]]),
               "llama_decode_tok_s": spread([x for ll in rr["llama"] for x in ll["decode_tok_s"]]),
               "prefill_ratio": spread([np.median(ll["prefill_ms"]) / np.median(lt["prefill_ms"])
                                        for lt, ll in zip(rr["litert"], rr["llama"], strict=True)]),
               "decode_ratio": spread([lt["decode_tok_s"] / np.median(ll["decode_tok_s"])
                                       for lt, ll in zip(rr["litert"], rr["llama"], strict=True)]),
               "cache_in_place": getattr(rts[p], "cache_in_place", False),
               "size_bytes": (Path(arts[p]) / "model.tflite").stat().st_size}
        out["results"][p] = res
    out["load_after"] = os.getloadavg()[0]
    return out


def table(o: dict) -> str:
    f = lambda s: f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f}"  # noqa: E731
    lines = [f"host: {o['cpu']}, {o['threads']} threads, prompt {o['prompt']}, decode {o['gen']}, "
             f"{o['rounds']} interleaved rounds (load after: {o['load_after']:.1f}); ratios LiteRT/llama.cpp "
             "speed, min / median / max",
             "| android artifact | size MB | LiteRT prefill p50 / p99 ms | LiteRT decode tok/s | llama.cpp "
             "| llama.cpp prefill ms | llama.cpp decode tok/s | prefill ratio | decode ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p, r in o["results"].items():
        lines.append(f"| {p} | {r['size_bytes'] / 1e6:.2f} | {r['litert_prefill_ms']['p50']:.1f} / "
                     f"{r['litert_prefill_ms']['p99']:.1f} | {r['litert_decode_tok_s']['median']:.0f} | "
                     f"{r['llama_type']} | {r['llama_prefill_ms']['median']:.1f} | "
                     f"{r['llama_decode_tok_s']['median']:.0f} | {f(r['prefill_ratio'])} | "
                     f"{f(r['decode_ratio'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("artifacts", nargs="+", help="PRECISION=ARTIFACT_DIR")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20, help="prefill calls a round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--llama-args", default="", help="extra llama-bench arguments, e.g. '--repack 0'")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    o = run(a)
    print(table(o))
    if a.json:
        a.json.write_text(json.dumps(o, indent=1))


if __name__ == "__main__":
    main()
