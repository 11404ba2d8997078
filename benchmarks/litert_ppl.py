"""Perplexity, top-1 agreement and host latency of LiteRT artifacts against the torch checkpoint.

    python benchmarks/litert_ppl.py CHECKPOINT HELDOUT.npy ARTIFACT_DIR... [--windows 32] [--threads 2]

HELDOUT.npy: int64 token ids of held-out text. Each window is prefill_len tokens (non-overlapping);
perplexity is exp(mean cross-entropy) of predicting tokens 2..L of every window. Latency is
measured on THIS machine (the host), not a phone, with the runner's round_ms: 1 warmup prefill,
then median and stddev of 30 prefill calls and of 30 greedy decode steps. Prints one JSON object per artifact.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(targets)), targets].mean())


def timed(ts: list[float]) -> tuple[float, float]:
    return float(np.median(ts)), float(np.std(ts))  # ms


def main() -> None:
    import torch
    from litelm_edge.backends.litert.runtime import LiteRTRuntime
    from litelm_edge.devices.runner import round_ms
    from litelm_edge.pipeline.checkpoint import load
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("heldout")
    ap.add_argument("artifacts", nargs="+")
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    model = load(a.checkpoint)[0]
    tokens = np.load(a.heldout)
    for art in a.artifacts:
        rt = LiteRTRuntime(Path(art) / "model.tflite", {}, a.threads)
        L = rt.prefill_len
        wins = [tokens[i:i + L] for i in range(0, len(tokens) - L, L)][:a.windows]
        ce_t, ce_l, agree = [], [], []
        for w in wins:
            with torch.no_grad():
                ref = model(torch.from_numpy(w)[None])[0][0].numpy()
            got = rt.prefill(w)
            ce_t.append(cross_entropy(ref[:-1], w[1:]))
            ce_l.append(cross_entropy(got[:-1], w[1:]))
            agree.append((ref.argmax(-1) == got.argmax(-1)).mean())
        r = round_ms(rt, wins[0], 30, 30)
        dec_ms, dec_sd = timed(r["decode_ms"])
        pre_ms, pre_sd = timed(r["prefill_ms"])
        print(json.dumps(dict(artifact=art, size_bytes=(Path(art) / "model.tflite").stat().st_size,
                              windows=len(wins), window_len=L,
                              ppl_torch=round(float(np.exp(np.mean(ce_t))), 3),
                              ppl_litert=round(float(np.exp(np.mean(ce_l))), 3),
                              top1_agreement=round(float(np.mean(agree)), 4),
                              host_decode_ms=round(dec_ms, 2), host_decode_sd=round(dec_sd, 2),
                              host_prefill_ms=round(pre_ms, 2), host_prefill_sd=round(pre_sd, 2),
                              threads=a.threads, runtime=rt.runtime_name)), flush=True)


if __name__ == "__main__":
    main()
