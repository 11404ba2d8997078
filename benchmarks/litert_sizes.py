"""Convert a checkpoint once and quantize it to every LiteRT precision; sizes and timings.

Runs in the LiteRT toolchain venv (tools/setup-litert.sh):

    PYTHONPATH=. ~/.cache/litelm-edge/toolchains/litert-0.10/bin/python benchmarks/litert_sizes.py \
        CHECKPOINT HELDOUT.npy OUT_DIR [--precisions int8,int8-full,int4-b32]

HELDOUT.npy: int64 held-out token ids; the LAST 16 windows of 68 tokens calibrate full-integer
INT8 (benchmarks/litert_ppl.py measures on the first windows, so the two do not overlap).
Writes OUT_DIR/<precision>/model.tflite and prints one JSON line per precision.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from litelm_edge.backends.litert.convert import quantize, strip_names, to_tflite
    from litelm_edge.backends.litert.inspect import breakdown, weight_dtypes
    from litelm_edge.pipeline.checkpoint import load
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("heldout")
    ap.add_argument("out", type=Path)
    ap.add_argument("--precisions", default="int8,int8-full,int4-b32")
    ap.add_argument("--prefill-len", type=int, default=64)
    ap.add_argument("--capacity", type=int, default=512)
    ap.add_argument("--windows", default="128", help="attention windows below capacity")
    a = ap.parse_args()
    model = load(a.checkpoint)[0]
    tokens = np.load(a.heldout)
    calib = [tokens[len(tokens) - (i + 1) * 68:len(tokens) - i * 68] for i in range(16)]
    (a.out / "fp32").mkdir(parents=True, exist_ok=True)
    fp32 = a.out / "fp32" / "model.tflite"
    t = time.time()
    windows = [int(w) for w in a.windows.split(",") if w]
    to_tflite(model, fp32, a.prefill_len, a.capacity, -30.0, windows)
    rows = [("fp32", fp32, time.time() - t, 0.0)]
    for p in a.precisions.split(","):
        (a.out / p).mkdir(exist_ok=True)
        t = time.time()
        quantize(fp32, a.out / p / "model.tflite", p, calib, a.prefill_len)
        rows.append((p, a.out / p / "model.tflite", rows[0][2], time.time() - t))
    for p, path, conv_s, q_s in rows:
        strip_names(path)  # as the build does
        print(json.dumps(dict(precision=p, convert_s=round(conv_s, 1), quantize_s=round(q_s, 1),
                              weight_dtypes=sorted(weight_dtypes(path)),
                              breakdown=breakdown(path, model.cfg.vocab_size))), flush=True)


if __name__ == "__main__":
    main()
