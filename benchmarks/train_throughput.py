"""Training throughput of `litelm-edge train` on this machine (GPU when there is one), and the hours a
token budget would take at that rate: the design's "training on one GPU < 12 h".

Each configuration (a batch size at one block size) is trained twice from scratch by the library's
own `train()`: for `--warmup` steps, then for `--warmup + --steps` steps, evaluation and checkpoint
only at the end of each, after one discarded run (the device's start-up). The difference of the two
runs' elapsed times is the time of `--steps` steady steps: model set-up, the first steps and the
final evaluation cancel out.
The hours printed for a budget are an estimate by linear extrapolation of that measured rate, and
say so; the token rate itself is measured.

    python benchmarks/train_throughput.py --data DATA [--preset minimind-26m] [--batch 32,64,128]
        [--block 512] [--steps 100] [--warmup 20] [--out result.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # train()'s progress bar: one line a configuration instead

def budgets(n_params: int) -> dict[str, float]:
    """Tokens: what the hours are printed for."""
    return {"1B tokens": 1e9, "Chinchilla (20 tokens a parameter)": 20 * n_params}

THRESHOLD_H = 12.0  # the design: training on one GPU < 12 h


def run_once(data: Path, out: Path, preset: str, batch: int, block: int, steps: int) -> dict:
    from litelm_edge.pipeline.model import preset as model_preset
    from litelm_edge.pipeline.train import TrainConfig, train
    cfg = model_preset(preset)
    c = TrainConfig(batch_size=batch, block_size=block, max_steps=steps, warmup_steps=min(10, steps),
                    eval_every=steps, eval_batches=2, keep_checkpoints=1)
    return train(data, out, cfg, c, log=lambda s: None)


def device_facts() -> dict:
    import torch
    from litelm_edge.devices.facts import cpu_facts
    facts = {"torch": torch.__version__, "cpu": cpu_facts()["cpu_model"],
             "cpus": len(os.sched_getaffinity(0))}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts |= {"gpu": p.name, "gpu_memory_gb": round(p.total_memory / 2**30, 1),
                  "cuda": torch.version.cuda,
                  "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return facts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a `litelm-edge data` folder")
    ap.add_argument("--preset", default="minimind-26m")
    ap.add_argument("--batch", default="32,64,128", help="batch sizes (sequences a step), comma-separated")
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--steps", type=int, default=100, help="timed steps (the difference of the two runs)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    from litelm_edge.pipeline.model import Transformer, preset as model_preset
    n_params = Transformer(model_preset(a.preset)).num_params()
    tokens_for = budgets(n_params)
    rows = []
    batches = [int(x) for x in a.batch.split(",")]
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        # a discarded run first: the device's start-up (a CUDA context, kernels loaded on first use)
        # would otherwise land in the first configuration's short run only and flatter its rate
        run_once(a.data, Path(tmp) / "first", a.preset, batches[0], a.block, a.warmup)
        for b in batches:
            short = run_once(a.data, Path(tmp) / f"b{b}-short", a.preset, b, a.block, a.warmup)
            long = run_once(a.data, Path(tmp) / f"b{b}-long", a.preset, b, a.block, a.warmup + a.steps)
            dt = long["elapsed_s"] - short["elapsed_s"]
            tok = a.steps * b * a.block
            row = {"batch": b, "block": a.block, "tokens_per_step": b * a.block, "steps_timed": a.steps,
                   "seconds": dt, "ms_per_step": 1e3 * dt / a.steps, "tokens_per_s": tok / dt,
                   "device": long["device"], "dtype": long["dtype"], "val_loss_end": long["val_loss"],
                   "hours_estimated": {k: v / (tok / dt) / 3600 for k, v in tokens_for.items()}}
            rows.append(row)
            print(f"batch {b} x {a.block}: {row['ms_per_step']:.1f} ms a step, {row['tokens_per_s']:,.0f} tokens/s "
                  f"(measured, {row['device']}, {row['dtype']})", flush=True)
    facts = device_facts()
    best = max(rows, key=lambda r: r["tokens_per_s"])
    print(f"\n{a.preset} ({n_params / 1e6:.1f}M parameters); {facts}")
    print("| batch x block | ms / step | tokens / s (measured) | " + " | ".join(f"h for {k} (estimated)" for k in tokens_for) + " |")
    print("|---|---|---|" + "---|" * len(tokens_for))
    for r in rows:
        print(f"| {r['batch']} x {r['block']} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | "
              + " | ".join(f"{h:.2f}" for h in r["hours_estimated"].values()) + " |")
    verdict = {k: {"hours": h, "under_threshold": h < THRESHOLD_H} for k, h in best["hours_estimated"].items()}
    print(f"\nbest: batch {best['batch']}; against < {THRESHOLD_H:.0f} h (estimated by linear extrapolation of the "
          f"measured rate): " + "; ".join(f"{k}: {v['hours']:.2f} h "
                                          f"({'pass' if v['under_threshold'] else 'FAIL'})"
                                          for k, v in verdict.items()))
    if a.out:
        a.out.write_text(json.dumps({"preset": a.preset, "n_params": n_params, "facts": facts, "rows": rows,
                                     "budgets_tokens": tokens_for, "threshold_h": THRESHOLD_H,
                                     "verdict": verdict,
                                     "method": "difference of two from-scratch runs of train(); hours: linear "
                                               "extrapolation of the measured tokens/s"}, indent=1))


if __name__ == "__main__":
    from litelm_edge.config import UserError
    try:
        main()
    except UserError as e:  # a data folder that does not fit the preset, say: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
