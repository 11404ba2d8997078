"""x86 artifacts (ONNX Runtime) against llama.cpp on the same weights: decode and prefill ratios.

llama.cpp is built once from the llama-cpp-python sdist (benchmarks/_llamacpp.py, cached under
~/.cache/litelm-edge/llama.cpp/); the same checkpoint goes through llama.cpp's own converter (f32)
and llama-quantize (q8_0, q4_0). Engines run in interleaved rounds; each round gives one median of
`reps` samples per engine; the table shows min / median / max over rounds and the ratio of medians.
Ours: the device runner's own timing functions (prefill of a p-token prompt, last logits only;
greedy decode of n tokens after it); llama-bench: -p p (prefill) and -n n -d p (decode after p).

    python benchmarks/x86_vs_llamacpp.py --preset minimind-26m             # untrained: no parity gate
    python benchmarks/x86_vs_llamacpp.py --checkpoint CKPT --data DATA     # parity printed per artifact
    python benchmarks/x86_vs_llamacpp.py --preset minimind-26m --before    # + the torch.export graphs
    python benchmarks/x86_vs_llamacpp.py ... --also "old=ART"              # + an artifact built earlier
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

from litelm_edge.backends.ort import PRECISIONS

BITS = {p.name: p.bits for p in PRECISIONS}  # our precision -> bits a weight
OPTIONS = {p.name: p.options for p in PRECISIONS}  # our precision -> onnxruntime-genai builder options
PAIRS = {32: "f32", 8: "q8_0", 4: "q4_0"}  # bits -> llama.cpp's type of the same bits


def untrained_checkpoint(preset: str, work: Path) -> tuple[Path, Path]:
    """An untrained preset, with held-out data and a tokenizer made from the bundled corpus (llama.cpp's
    converter needs a tokenizer; `build` needs held-out windows, where parity is recorded, not enforced)."""
    import torch
    from litelm_edge.pipeline import checkpoint as ckpt
    from litelm_edge.pipeline.data import default_corpus, prepare
    from litelm_edge.pipeline.model import Transformer, preset as model_preset
    cfg = model_preset(preset)
    work = work / "untrained" / preset
    if not (work / "data" / "val.bin").is_file():
        prepare([default_corpus()], work / "data", vocab_size=cfg.vocab_size, log=lambda m: None)
    if not (work / "ckpt").is_dir():
        torch.manual_seed(0)
        ckpt.save(work / "ckpt", Transformer(cfg), (work / "data" / "tokenizer.json").read_text(),
                  {"step": 0})
    return work / "ckpt", work / "data"


class UsageError(Exception):
    """A bad argument: main prints it in one line and exits 2."""


def weights_id(ck: Path) -> str:
    """The checkpoint's weights, named by their sha256: what --work's cached files are kept under,
    so a GGUF or an artifact of other weights is never reused (session 6 found one that was)."""
    from litelm_edge.files import sha256_file
    meta = ck / "training.json"  # ours record it; a folder saved by transformers has none
    known = json.loads(meta.read_text()).get("model_sha256") if meta.is_file() else None
    return (known or sha256_file(ck / "model.safetensors"))[:12]


def build_ours(ck: Path, data, prec: str, graph: str, work: Path) -> tuple[Path, dict]:
    """A full `build` (manifest, reference, parity recorded but not enforced: gate=False) into
    work, the folder of these weights."""
    from litelm_edge.manifest import read_manifest
    from litelm_edge.flows.build import build
    art = work / f"x86-{graph}-{prec}"
    if not (art / "manifest.json").is_file():  # --work DIR keeps builds between runs
        build(ck, "x86", art, prec, data, sets={"graph": graph}, log=lambda s: None, gate=False)
    return art, read_manifest(art)


def time_ours(rt, prompt, n: int, reps: int) -> tuple[float, float]:
    """-> (median prefill ms, median decode tok/s) of `reps` samples, with the runner's functions."""
    from litelm_edge.devices.runner import time_decode, time_prefill
    pre = time_prefill(rt, prompt, reps)
    dec = [1e3 / np.mean(time_decode(rt, prompt, n)) for _ in range(reps)]
    return float(np.median(pre)), float(np.median(dec))


def time_llama(gguf: Path, threads: int, p: int, n: int, reps: int) -> tuple[float, float]:
    r = llama.bench(gguf, threads, p, n, reps)
    return float(np.median(r["prefill_ms"])), float(np.median(r["decode_tok_s"]))


def summary(vals: list[float]) -> dict:
    a = np.asarray(vals)
    med = float(np.median(a))
    return {"min": float(a.min()), "median": med, "max": float(a.max()),
            "spread_pct": 50 * float(a.max() - a.min()) / med}


def fmt(s: dict, nd=0) -> str:
    return f"{s['min']:,.{nd}f} / {s['median']:,.{nd}f} / {s['max']:,.{nd}f} (±{s['spread_pct']:.0f}%)"


def table(res: dict, sizes: dict, rounds: dict) -> list[str]:
    """Ratios = ours / llama.cpp speed of equal bits: of the medians over rounds, and (decode) per
    round, min / median / max: a VM's speed drifts by tens of % over minutes, and both engines of
    one round see the same drift, so the per-round ratio is the steadier figure."""
    out = ["| engine | size MB | decode tok/s min / median / max | prefill-64 ms min / median / max | decode vs llama.cpp "
           "| decode ratio per round | prefill vs llama.cpp |", "|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        bits = BITS.get(name.split()[-1])
        ref = f"llama.cpp {PAIRS[bits]}" if bits and f"llama.cpp {PAIRS[bits]}" in res else None
        dr = f"{r['decode']['median'] / res[ref]['decode']['median']:.2f}x" if ref else ""
        per = summary([a[1] / b[1] for a, b in zip(rounds[name], rounds[ref], strict=True)]) if ref else None
        pr = f"{res[ref]['prefill']['median'] / r['prefill']['median']:.2f}x" if ref else ""
        out.append(f"| {name} | {sizes[name]:.1f} | {fmt(r['decode'])} | {fmt(r['prefill'], 1)} | {dr} | "
                   f"{fmt(per, 2) if per else ''} | {pr} |")
    return out


def engines(a, work: Path):
    """{name: (kind, handle)}, sizes MB, parity lines."""
    from litelm_edge.devices.runner import open_runtime
    from litelm_edge.flows.build import describe
    ck, data = (a.checkpoint, a.data) if a.checkpoint else untrained_checkpoint(a.preset, work)
    eng, sizes, notes = {}, {}, []
    wid = weights_id(ck)  # a hash of 100 MB when the folder does not record it: once
    for gguf_type in filter(None, a.llama.split(",")):
        f32 = llama.convert(ck, "f32", work / wid / "gguf", log=print)
        g = f32 if gguf_type == "f32" else llama.quantize(f32, gguf_type)
        eng[f"llama.cpp {gguf_type}"], sizes[f"llama.cpp {gguf_type}"] = ("llama", g), g.stat().st_size / 1e6
    for graph in (["export"] if a.before else []) + ["fused"]:
        # the export graph makes no builder recipe (a row with options: k-quant, an 8-bit head)
        for prec in [p for p in a.precisions.split(",") if graph == "fused" or not OPTIONS[p]]:
            art, m = build_ours(ck, data, prec, graph, work / wid)
            name = f"ort {m.get('graph', 'export')} {prec}"
            eng[name] = ("ort", open_runtime(art, m, a.threads, {"on": True, "off": False}.get(a.spin)))
            sizes[name] = m["size_bytes"] / 1e6
            notes.append(f"{name}: gate {describe(m['parity'])} "
                         f"({'ok' if m['parity']['ok'] else 'FAILS'}{'' if a.checkpoint else ', untrained'})")
    from litelm_edge.manifest import read_manifest
    for spec in a.also:  # artifacts built elsewhere (an earlier version's, say), run by today's runtime
        label, _, art = spec.partition("=")
        if not (Path(art) / "manifest.json").is_file():
            raise UsageError(f"--also {spec}: give LABEL=ARTIFACT, an artifact folder with a manifest.json")
        m = read_manifest(Path(art))
        # before session 6: the path
        made_from = m["training"].get("model_sha256") or weights_id(Path(m["checkpoint"]))
        if made_from[:12] != wid:
            raise UsageError(f"--also {spec}: built from other weights than {ck} (its manifest's "
                             "training.model_sha256)")
        name = f"{label.strip()} {m['precision']}"
        eng[name] = ("ort", open_runtime(Path(art), m, a.threads, {"on": True, "off": False}.get(a.spin)))
        sizes[name] = m["size_bytes"] / 1e6
    return eng, sizes, notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--precisions", default="fp32,int8-b32,int4-b32")
    ap.add_argument("--llama", default="f32,q8_0,q4_0", help="llama.cpp types ('' leaves llama.cpp out)")
    ap.add_argument("--before", action="store_true",
                    help="also the torch.export graph (the graph before the fused one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spin", choices=("on", "off", "default"), default="default")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("-p", type=int, default=64)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=ARTIFACT",
                    help="an x86 artifact built before (e.g. by an earlier version), run as 'LABEL PRECISION'")
    ap.add_argument("--out", type=Path, help="JSON of every round")
    ap.add_argument("--work", type=Path,
                    help="folder for checkpoints, GGUF files and artifacts, reused when there")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="x86-vs-llamacpp-"))
    work.mkdir(parents=True, exist_ok=True)
    eng, sizes, notes = engines(a, work)
    print("\n".join(notes) or "")
    prompt = np.random.default_rng(0).integers(0, 256, a.p, dtype=np.int64)
    rounds = {k: [] for k in eng}
    for _, (kind, h) in eng.items():  # warmup
        if kind == "ort":
            time_ours(h, prompt, 8, 1)
    for r in range(a.rounds):
        for name, (kind, h) in eng.items():
            rounds[name].append(time_ours(h, prompt, a.n, a.reps) if kind == "ort" else time_llama(h, a.threads, a.p, a.n, a.reps))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1][1]:.0f} tok/s" for k, v in rounds.items()), flush=True)
    res = {k: {"prefill": summary([x[0] for x in v]), "decode": summary([x[1] for x in v])} for k, v in rounds.items()}
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\n{cpu or platform.processor()}; {a.threads} threads, spin {a.spin}; {a.rounds} interleaved rounds x {a.reps} reps; "
          f"prefill {a.p}, decode {a.n} after {a.p}; load: {load.split('load average:')[-1].strip()}")
    print("\n".join(table(res, sizes, rounds)))
    if a.out:
        a.out.write_text(json.dumps({"rounds": rounds, "summary": res, "sizes_mb": sizes, "notes": notes,
                                     "cpu": cpu, "load": load, "args": {k: str(v) for k, v in vars(a).items()}}, indent=1))


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
