"""`build --tune --remote ADDRESS`: pick the TVM backend's matmul register tile on the real device.

The schedule's search space is the register tile (MT rows x NJ columns, `schedule.py`). Each
candidate is built (with the usual parity check), pushed and benched on the device with a short
protocol by `bench_remote`; the fastest (mean prefill-64 ms + mean decode ms x 8) wins, the final
artifact is built with it, and the database of every candidate's timings is stored beside the
artifact as `<out>.tuning.json` (the tile also lands in the manifest). Pass that tile to later
builds with `--set tvm.tile=MT,NJ` or write it into the target TOML.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from ..devices.runner import Protocol

CANDIDATES = ([4, 16], [2, 16], [4, 8], [8, 8], [2, 32], [1, 32])
# the bench protocol, shortened: a candidate is timed for a ranking, not a report
PROTOCOL = asdict(replace(Protocol(), reps=3, warmup=1, gen_len=16, concurrency=1))
DECODE_WEIGHT = 8  # a reply decodes many tokens per prefill: weigh decode time accordingly


def score(res: dict) -> float:
    return res["prefill_ms"]["mean"] + DECODE_WEIGHT * res["decode_ms_per_token"]["mean"]


def tune(checkpoint, target: str, out, remote: str, precision=None, data=None, sets=None,
         log=print, candidates=CANDIDATES) -> dict:
    from ..devices.remote_bench import bench_remote
    from .build import build
    sets = dict(sets or {})
    db = {"target": target, "remote": remote, "protocol": PROTOCOL, "candidates": []}
    tmp = Path(tempfile.mkdtemp(prefix="litelm-tvm-tune-"))
    try:
        for tile in candidates:
            art = tmp / f"tile-{tile[0]}x{tile[1]}"
            build(checkpoint, target, art, precision, data, dict(sets, **{"tvm.tile": tile}), log=log)
            res = bench_remote(remote, art, PROTOCOL, log=log)
            row = {"tile": tile, "prefill_ms": res["prefill_ms"]["mean"],
                   "decode_ms": res["decode_ms_per_token"]["mean"], "score": score(res),
                   "provenance": res["provenance"]}
            log(f"tune: tile {tile}: prefill {row['prefill_ms']:.1f} ms, decode {row['decode_ms']:.2f} ms")
            db["candidates"].append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = min(db["candidates"], key=lambda r: r["score"])
    db["best"] = best["tile"]
    if any(str(r["provenance"]).startswith("emulated") for r in db["candidates"]):
        db["note"] = "timed on an emulated device: a function check; the tile it picked says nothing about speed"
        log(f"tune: {db['note']}")
    manifest = build(checkpoint, target, out, precision, data, dict(sets, **{"tvm.tile": best["tile"]}),
                     log=log)
    path = Path(out).with_name(Path(out).name + ".tuning.json")
    path.write_text(json.dumps(db, indent=1))
    log(f"tune: best tile {best['tile']} -> {out}, database {path}")
    return manifest
