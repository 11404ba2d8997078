"""Measure every compression step on one base checkpoint: params, artifact size, val ppl, seconds.

    python tools/measure_compress.py BASE_CKPT DATA_DIR WORKDIR [--ft-steps 60] [--distill-steps 100]
        [--set train.lr=3e-4 ...] [--student-set model.n_layer=2 ...] [--workers 0]

Every perplexity uses the same val.bin windows (litelm_edge.pipeline.eval defaults); artifact perplexities go
through the artifact's runtime (ORT for target x86). The compression steps run one after another
(on the GPU when there is one); with --workers N each finished checkpoint is built and measured in
one of N CPU processes meanwhile. Writes WORKDIR/measure.json and measure.md, and ends with the
QAT-vs-PTQ comparison: the int8 perplexity cost of plain PTQ on the base, of PTQ after a plain
fine-tune of the same length (the fair control), and of QAT.
"""
import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from litelm_edge.config import parse_sets
from litelm_edge.pipeline.compress import compress

def NOLOG(m):  # a log that drops every line
    pass


def measure(name, ckpt, step_s, how, precisions, data, work, more):
    """-> one row per precision: checkpoint ppl (torch), artifact size and ppl (its runtime)."""
    from litelm_edge.pipeline.eval import eval_artifact, eval_checkpoint
    from litelm_edge.flows.build import build
    c = eval_checkpoint(ckpt, data)
    rows = []
    for p in precisions:
        t0, art = time.time(), Path(work) / "art" / f"{name}-{p}"
        try:
            # a failed gate is a column, not a hole
            m = build(ckpt, "x86", art, p, data, log=NOLOG, gate=False)
            e = eval_artifact(art, data)
            a = {"size_mb": m["size_bytes"] / 1e6, "artifact_ppl": e["ppl"],
                 "parity_top1": m["parity"]["top1_agreement"], "parity_ok": m["parity"]["ok"]}
        except Exception as ex:  # a failed build is a row that says so; the table goes on
            a = {"error": f"{type(ex).__name__}: {ex}"}
        rows.append(dict(name=name, params=c["n_params"], torch_ppl=c["ppl"], step_s=step_s, how=how,
                         precision=p, build_s=time.time() - t0, **a, **more))
    return rows


def _threads(n):
    import torch
    torch.set_num_threads(n)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base"), ap.add_argument("data", type=Path), ap.add_argument("work", type=Path)
    ap.add_argument("--ft-steps", type=int, default=60)
    ap.add_argument("--distill-steps", type=int, default=100)
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="train.KEY=VALUE for every fine-tune")
    ap.add_argument("--student-set", action="append", default=["model.n_layer=2"],
                    help="model.KEY=VALUE of the student")
    ap.add_argument("--only", default="", help="comma-separated step names to run (default: all)")
    ap.add_argument("--workers", type=int, default=0, help="CPU processes building and measuring meanwhile")
    ap.add_argument("--threads", type=int, default=4, help="torch/ORT threads per worker")
    return ap.parse_args()


ORDER = ["fp32 base", "finetune-control", "qat", "prune30", "prune50", "structured", "share2", "distill"]


def _table(rows: list[dict]) -> list[str]:
    """measure.md: a row a variant (and precision), then the QAT-vs-PTQ lines."""
    lines = ["| variant | params | artifact | size MB | val ppl torch | val ppl artifact (ORT) | step s | how |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} {r.get('precision', '')} | failed: {r['error']} |")
            continue
        lines.append(f"| {r['name']} | {r['params']:,} | x86 {r['precision']} | {r['size_mb']:.2f} | {r['torch_ppl']:.2f} | "
                     f"{r['artifact_ppl']:.2f} | {r['step_s'] or 0:.0f} | {r['how']}"
                     + "".join(f"; {k} {r[k]:.3g}" for k in ("alone_ppl", "sparsity", "grid_error") if k in r) + " |")
    return [*lines, "", *qat_vs_ptq(rows)]


def main():
    a = _args()
    a.work.mkdir(parents=True, exist_ok=True)
    ft, dst = a.ft_steps, a.distill_steps
    train = dict({"train.max_steps": ft, "train.eval_every": ft, "train.eval_batches": 4},
                 **parse_sets(a.sets))
    pool = ProcessPoolExecutor(a.workers, get_context("spawn"), _threads, (a.threads,)) if a.workers else None
    pending, rows = [], []

    def record(batch):
        rows.extend(batch)
        for r in batch:
            print(json.dumps(r), flush=True)
        (a.work / "measure.json").write_text(json.dumps(rows, indent=1))

    def row(name, ckpt, step_s, how, precisions=("int8",), **more):
        job = (name, str(ckpt), step_s, how, precisions, str(a.data), str(a.work), more)
        if pool:
            pending.append(pool.submit(measure, *job))
        else:
            record(measure(*job))

    def harvest(wait=False):
        for f in [f for f in pending if wait or f.done()]:
            pending.remove(f)
            record(f.result())

    def step(name, method, sets, how, precisions=("int8",), **kw):
        if a.only and name not in a.only.split(","):
            return
        harvest()
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        try:
            r = compress(method, a.base, a.data, a.work / name, dict(train, **sets), log=NOLOG)
            extra = {k: r[k] for k in ("alone_ppl", "sparsity", "grid_error") if k in r}
            row(name, r["checkpoint"], r["seconds"], how, precisions, **extra, **kw)
        except Exception as e:
            record([{"name": name, "error": f"{type(e).__name__}: {e}"}])

    base_s = json.loads((Path(a.base) / "training.json").read_text()).get("elapsed_s") if (Path(a.base) / "training.json").is_file() else None
    row("fp32 base", a.base, base_s, "the base checkpoint", ("fp32", "int8"))
    step("finetune-control", "prune", {}, f"plain fine-tune {ft} steps (control for QAT)")
    step("qat", "qat", {}, f"QAT {ft} steps (ORT's grids), weights snapped")
    step("prune30", "prune", {"sparsity": 0.3}, f"global magnitude 30%, {ft} steps with masks")
    step("prune50", "prune", {"sparsity": 0.5}, f"global magnitude 50%, {ft} steps with masks")
    step("structured", "prune", {"ffn": 0.5, "heads": 0.5},
         f"half the FFN channels and query heads, {ft} steps", ("fp32", "int8"))
    step("share2", "share", {"every": 2}, f"merge layer pairs (mean), {ft} steps")
    student = parse_sets(a.student_set)
    step("distill", "distill", dict(student, **{"train.max_steps": dst, "train.eval_every": dst,
                                                "train.lr": 3e-3, "train.warmup_steps": min(100, dst // 10)}),
         f"student ({', '.join(a.student_set)}) from scratch, {dst} steps, alpha 0.5, T 2")
    harvest(wait=True)
    if pool:
        pool.shutdown()
    rows.sort(key=lambda r: (ORDER.index(r["name"]) if r["name"] in ORDER else 99, r.get("precision", "")))
    (a.work / "measure.json").write_text(json.dumps(rows, indent=1))
    lines = _table(rows)
    (a.work / "measure.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def qat_vs_ptq(rows) -> list[str]:
    """The int8 cost, in perplexity, of PTQ and of QAT, each against the float model it came from."""
    got = {(r["name"], r.get("precision")): r for r in rows if "error" not in r}
    base32, base8 = got.get(("fp32 base", "fp32")), got.get(("fp32 base", "int8"))
    ctl8, qat8 = got.get(("finetune-control", "int8")), got.get(("qat", "int8"))
    if not (base32 and base8 and ctl8 and qat8):
        return ["QAT vs PTQ: a row is missing, no comparison"]
    f32 = base32["artifact_ppl"]
    pct = lambda x, ref: f"{100 * (x / ref - 1):+.2f}%"  # noqa: E731
    return [f"- PTQ int8 of the base: {base8['artifact_ppl']:.3f} vs its fp32 {f32:.3f} ({pct(base8['artifact_ppl'], f32)})",
            f"- PTQ int8 after a plain fine-tune (control): {ctl8['artifact_ppl']:.3f} vs that model's float "
            f"{ctl8['torch_ppl']:.3f} ({pct(ctl8['artifact_ppl'], ctl8['torch_ppl'])}), vs the base fp32 ({pct(ctl8['artifact_ppl'], f32)})",
            f"- QAT int8: {qat8['artifact_ppl']:.3f}: vs the base fp32 ({pct(qat8['artifact_ppl'], f32)}), "
            f"vs PTQ int8 of the base ({pct(qat8['artifact_ppl'], base8['artifact_ppl'])}), "
            f"vs the control's PTQ int8 ({pct(qat8['artifact_ppl'], ctl8['artifact_ppl'])})",
            f"- QAT loses less than PTQ on the same model: {'yes' if qat8['artifact_ppl'] < base8['artifact_ppl'] else 'no'}; "
            "less than PTQ after the same fine-tune: "
            f"{'yes' if qat8['artifact_ppl'] < ctl8['artifact_ppl'] else 'no'}"]


if __name__ == "__main__":
    main()
