"""Measure every compression step on one base checkpoint: params, artifact size, val ppl, seconds.

    python tools/measure_compress.py BASE_CKPT DATA_DIR WORKDIR [FT_STEPS] [DISTILL_STEPS]

Every perplexity uses the same val.bin windows (litelm_edge.eval defaults); artifact perplexities go
through the artifact's runtime (ORT for target x86). Writes WORKDIR/measure.json and measure.md.
"""
import json
import sys
import time
from pathlib import Path

from litelm_edge.compress import compress
from litelm_edge.eval import eval_artifact, eval_checkpoint
from litelm_edge.export import build

base, data, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ft = int(sys.argv[4]) if len(sys.argv) > 4 else 60
dst = int(sys.argv[5]) if len(sys.argv) > 5 else 100
work.mkdir(parents=True, exist_ok=True)
rows, quiet = [], (lambda m: None)
TRAIN = {"train.max_steps": ft, "train.eval_every": ft, "train.eval_batches": 4}


def art(name, ckpt, precision):
    t0 = time.time()
    m = build(ckpt, "x86", work / "art" / f"{name}-{precision}", precision, data, log=quiet)
    e = eval_artifact(work / "art" / f"{name}-{precision}", data)
    return {"precision": precision, "size_mb": m["size_bytes"] / 1e6, "artifact_ppl": e["ppl"], "build_s": time.time() - t0}


def row(name, ckpt, step_s, how, precisions=("int8",), **more):
    c = eval_checkpoint(ckpt, data)
    for p in precisions:
        r = dict(name=name, params=c["n_params"], torch_ppl=c["ppl"], step_s=step_s, how=how, **art(name, ckpt, p), **more)
        rows.append(r)
        print(json.dumps(r), flush=True)
        (work / "measure.json").write_text(json.dumps(rows, indent=1))


def step(name, method, sets, how, **kw):
    try:
        r = compress(method, base, data, work / name, dict(TRAIN, **sets), log=quiet)
        extra = {k: r[k] for k in ("alone_ppl", "sparsity", "grid_error") if k in r}
        row(name, r["checkpoint"], r["seconds"], how, **extra, **kw)
        return r
    except Exception as e:  # a failed row is reported, the table goes on
        rows.append({"name": name, "error": str(e)})
        print(name, "FAILED", e, flush=True)


row("fp32 base", base, json.load(open(Path(base) / "training.json")).get("elapsed_s"), "trained by the quickstart recipe", ("fp32", "int8"))
step("finetune-control", "prune", {}, f"plain fine-tune {ft} steps (control for QAT)")
step("qat", "qat", {}, f"QAT {ft} steps, weights snapped to the int8 grid")
step("prune30", "prune", {"sparsity": 0.3}, f"global magnitude 30%, {ft} steps with masks")
step("prune50", "prune", {"sparsity": 0.5}, f"global magnitude 50%, {ft} steps with masks")
step("structured", "prune", {"ffn": 0.5, "heads": 0.5}, f"half the FFN channels and query heads, {ft} steps", precisions=("fp32", "int8"))
step("share2", "share", {"every": 2}, f"merge layer pairs (mean), {ft} steps")
step("distill", "distill", {"model.n_layer": 2, "train.max_steps": dst, "train.eval_every": dst, "train.lr": 3e-3},
     f"2-layer student from scratch, {dst} steps, alpha 0.5, T 2")
lines = ["| variant | params | artifact | size MB | val ppl torch | val ppl artifact (ORT) | step s | how |", "|---|---|---|---|---|---|---|---|"]
for r in rows:
    if "error" in r:
        lines.append(f"| {r['name']} | failed: {r['error']} |")
        continue
    lines.append(f"| {r['name']} | {r['params']:,} | x86 {r['precision']} | {r['size_mb']:.2f} | {r['torch_ppl']:.2f} | "
                 f"{r['artifact_ppl']:.2f} | {r['step_s'] or 0:.0f} | {r['how']}"
                 + "".join(f"; {k} {r[k]:.3g}" for k in ("alone_ppl", "sparsity", "grid_error") if k in r) + " |")
(work / "measure.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
