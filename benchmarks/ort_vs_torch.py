"""x86 artifacts (ONNX Runtime, each precision) against torch eager on the same checkpoint.

Prints, from one run with the engines interleaved rep by rep, prefill latency of a 64-token prompt
and decode tokens/s over 128 tokens with the KV cache, and the ratios to torch eager.

    python benchmarks/ort_vs_torch.py --checkpoint runs/quickstart/run
    python benchmarks/ort_vs_torch.py --preset minimind-26m      # untrained, default corpus tokenizer
    python benchmarks/ort_vs_torch.py --checkpoint CKPT --data DATA --precisions fp32,int8,int8-b32,int4-b32
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from litelm_edge.devices.runner import open_runtime, round_ms
from litelm_edge.manifest import read_manifest
from litelm_edge.pipeline import checkpoint as ckpt
from litelm_edge.flows.build import build


class TorchEngine:
    def __init__(self, model):
        self.m = model

    @torch.no_grad()
    def prefill(self, ids):
        k, v = self.m.empty_cache()
        logits, self.k, self.v = self.m.forward_cached(torch.from_numpy(ids)[None], k, v)
        return logits[0]

    @torch.no_grad()
    def decode(self, tok):
        logits, self.k, self.v = self.m.forward_cached(torch.tensor([[tok]]), self.k, self.v)
        return logits[0, -1]


def measure(engine, prompt, gen_len):
    """(prefill ms, decode tok/s) of one round of the runner's protocol (round_ms)."""
    r = round_ms(engine, prompt, 1, gen_len)
    return r["prefill_ms"][0], 1e3 / np.mean(r["decode_ms"])


def untrained_checkpoint(preset: str, work: Path) -> tuple[Path, Path]:
    from x86_vs_llamacpp import untrained_checkpoint as make  # a tokenizer and held-out data too
    return make(preset, work)


def raw_build(model, art: Path, precision: str, tokenizer_json: str) -> dict:
    """The ORT backend's export without `build`'s parity gate: an untrained model's near-tied
    logits make next-token agreement meaningless, and this script measures speed and size only."""
    from dataclasses import asdict
    from litelm_edge.backends import BuildContext
    from litelm_edge.backends.ort import BACKEND, Settings
    from litelm_edge.backends.ort.build import build as ort_build
    art.mkdir(parents=True)
    res = ort_build(BuildContext(model, art, {}, art, precision, [], Settings(), log=lambda s: None,
                                 tokenizer_json=tokenizer_json))
    c = model.cfg
    keys = ("vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "max_seq_len")
    return dict(res.extra, runtime=BACKEND.runtime, backend="ort", model={k: getattr(c, k) for k in keys},
                ort=asdict(Settings()) | res.section)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--gen-len", type=int, default=128)
    ap.add_argument("--precisions", default="fp32,int8,int8-b32,int4-b32",
                    help="comma-separated ORT precisions")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ort-vs-torch-"))
    ck, data = (a.checkpoint, a.data) if a.checkpoint else untrained_checkpoint(a.preset, work)
    if not a.checkpoint:
        print(f"untrained {a.preset}: built without the parity gate (speed and size only)")
    model, tok_json, _ = ckpt.load(ck)
    engines = {"torch eager fp32": TorchEngine(model)}
    sizes = {"torch eager fp32": 4 * model.num_params() / 1e6}
    for prec in a.precisions.split(","):
        art = work / f"x86-{prec}"
        if a.checkpoint:
            build(ck, "x86", art, prec, data, log=lambda s: None, gate=False)  # parity printed, not enforced
            manifest = read_manifest(art)
            print(f"{prec}: parity top-1 {manifest['parity']['top1_agreement']:.3f} "
                  f"({manifest['parity']['rule']})")
        else:
            manifest = raw_build(model, art, prec, tok_json)
        engines[f"onnxruntime {prec}"] = open_runtime(art, manifest)
        sizes[f"onnxruntime {prec}"] = sum(p.stat().st_size for p in art.iterdir()) / 1e6
    prompt = np.random.default_rng(0).integers(0, model.cfg.vocab_size, 64, dtype=np.int64)
    res = {k: [] for k in engines}
    for e in engines.values():  # warmup
        measure(e, prompt, 8)
    for _ in range(a.reps):
        for name, e in engines.items():
            res[name].append(measure(e, prompt, a.gen_len))
    base_pre = np.median([r[0] for r in res["torch eager fp32"]])
    base_tok = np.median([r[1] for r in res["torch eager fp32"]])
    print(f"{model.num_params() / 1e6:.1f}M params, torch threads {torch.get_num_threads()}, {a.reps} reps "
          "interleaved, median")
    print("| engine | size MB | prefill-64 ms | decode tok/s | prefill speedup | decode speedup |")
    print("|---|---|---|---|---|---|")
    for name, rs in res.items():
        pre, tok = np.median([r[0] for r in rs]), np.median([r[1] for r in rs])
        print(f"| {name} | {sizes[name]:.1f} | {pre:.2f} | {tok:.1f} | {base_pre / pre:.2f}x | "
              f"{tok / base_tok:.2f}x |")


if __name__ == "__main__":
    main()
