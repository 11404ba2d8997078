"""run: a recipe (recipes/NAME.toml) end to end — data -> train -> compress -> build -> bench -> report.

With [gates] and [[compress]] steps (see gates.py) the build/bench part repeats: attempt 0 ships the
trained model, and while a gate fails, attempt k applies compression step k, up to max_attempts.

Each step's output lands in the recipe's workdir; a step whose output is already there and was
made from the same inputs is reused, so a second run only redoes what changed.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import UserError, named_toml, override


def _apply_sets(recipe: dict, sets: dict) -> dict:
    """--set train.max_steps=100 / data.vocab=2048 / recipe.workdir=x edit the recipe tables."""
    for key, value in sets.items():
        table, _, field = key.partition(".")
        if table not in recipe or not field:
            raise UserError(f"unknown recipe key '{key}', tables: {', '.join(recipe)}")
        if table == "train" and field not in ("preset",):
            recipe["train"].setdefault("set", {})[field] = value
        else:
            recipe[table][field] = value
    return recipe


def step_data(recipe: dict, work: Path, log) -> Path:
    from .data import DataConfig, default_corpus, prepare
    d = recipe["data"]
    inputs = [str(default_corpus()) if i == "default" else i for i in d["inputs"]]
    out = work / "data"
    meta = out / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("inputs") == inputs:
        log(f"data: reusing {out}")
        return out
    prepare(inputs, out, d.get("tokenizer"), int(d.get("vocab", 4096)), override(DataConfig(), d.get("set", {})), log)
    m = json.loads(meta.read_text())
    meta.write_text(json.dumps(dict(m, inputs=inputs), indent=1))
    return out


def step_train(recipe: dict, data: Path, work: Path, log) -> dict:
    from .config import split_sets
    from .model import preset
    from .train import TrainConfig, train
    t = recipe["train"]
    model_sets, rest = split_sets(dict(t.get("set", {})), "model")
    cfg = override(TrainConfig(), rest, "recipe [train.set]")
    log(f"train: preset {t.get('preset', 'tiny')}, {cfg.max_steps} steps")
    return train(data, work / "run", preset(t.get("preset", "tiny"), model_sets), cfg, resume=True, log=log)


def step_compress(step: dict, src: Path, data: Path, work: Path, k: int, log) -> dict:
    """Apply one [[compress]] step (method + set) to checkpoint `src` -> work/compress-k-METHOD."""
    from .compress import compress
    if "method" not in step:
        raise UserError(f"[[compress]] step {k} needs a 'method' (qat, prune, distill, share)")
    out = work / f"compress-{k}-{step['method']}"
    log(f"compress: attempt {k} applies {step['method']} {step.get('set', {})}")
    return compress(step["method"], src, data, out, dict(step.get("set", {})), log=log)


def attempt(k: int, label: str, ckpt: Path, recipe: dict, data: Path, work: Path, ref_ppl: float, log) -> dict:
    """Build, eval (through the runtime) and bench every target; judge the gates."""
    from . import gates, report
    from .bench import bench
    from .eval import eval_artifact, eval_checkpoint
    from .export import ParityError, build
    b = recipe["build"]
    c = eval_checkpoint(ckpt, data)
    a = {"attempt": k, "step": label, "checkpoint": str(ckpt), "n_params": c["n_params"], "ckpt_ppl": c["ppl"],
         "targets": [], "bench": {}}
    for target in b["targets"]:
        art = work / "artifacts" / f"{target}-{b.get('precision', 'default')}" / f"attempt-{k}"
        try:
            m = build(ckpt, target, art, b.get("precision"), data, log=log)
        except ParityError as e:  # a failed gate of this attempt, not the end of the run
            log(f"build: {target}: {e}")
            a["targets"].append({"target": target, "precision": b.get("precision") or "default", "size_mb": None,
                                 "ppl": None, "ok": False, "gates": [
                                     {"gate": "build parity", "value": e.parity["top1_agreement"], "limit": e.parity["rule"],
                                      "pass": False, "note": "artifact vs torch on held-out text; not written, not benched"}]})
            continue
        log(f"build: {target}/{m['precision']} {m['size_bytes'] / 1e6:.2f} MB, parity top-1 {m['parity']['top1_agreement']:.3f}")
        ppl = eval_artifact(art, data)["ppl"]
        r = bench(art, dict(recipe.get("bench", {})), log=log)
        report.write(r, art)
        rows = gates.judge(recipe.get("gates", {}), ref_ppl, ppl, r)
        a["targets"].append({"target": target, "precision": m["precision"], "size_mb": m["size_bytes"] / 1e6,
                             "ppl": ppl, "gates": rows, "ok": gates.passed(rows)})
        a["bench"][target] = r
    a["ok"] = all(t["ok"] for t in a["targets"])
    return a


def run_recipe(name: str, sets: dict | None = None, log=print, until: str | None = None) -> dict:
    """data -> train -> [compress -> build -> eval -> bench -> gates] until the gates pass.
    until="train" stops after training (CI's train job: each device job builds the checkpoint)."""
    from . import gates, report
    from .eval import eval_checkpoint
    path, recipe = named_toml("recipes", name)
    recipe = _apply_sets(recipe, sets or {})
    for table in ("recipe", "data", "train", "build"):
        if table not in recipe:
            raise UserError(f"{path}: recipe needs a [{table}] table")
    steps = recipe.get("compress", [])
    if not isinstance(steps, list):
        raise UserError(f"{path}: write compression steps as [[compress]] tables (an array), not [compress]")
    max_attempts, _, _ = gates.split(recipe.get("gates", {}))
    work = Path(recipe["recipe"].get("workdir", f"runs/{path.stem}"))
    data = step_data(recipe, work, log)
    summary = step_train(recipe, data, work, log)
    log(f"train: step {summary['step']}, val loss {summary['val_loss']:.4f}, val ppl {summary['val_ppl']:.2f}")
    if until == "train":
        return {"train": summary, "checkpoint": str(work / "run"), "data": str(data), "ok": True}
    ref_ppl = eval_checkpoint(work / "run", data)["ppl"]
    attempts, ckpt, label = [], work / "run", "trained model, no compression"
    for k in range(min(max_attempts, len(steps) + 1)):
        if k > 0:  # step k starts from the trained model, or from the last attempt with from = "previous"
            src = ckpt if steps[k - 1].get("from", "base") == "previous" else work / "run"
            c = step_compress(steps[k - 1], src, data, work, k, log)
            ckpt, label = Path(c["checkpoint"]), f"{steps[k - 1]['method']} {steps[k - 1].get('set', {})}"
            label += f" ({c['note']})" if c.get("note") else ""
        attempts.append(attempt(k, label, ckpt, recipe, data, work, ref_ppl, log))
        if k > 0:
            attempts[-1]["seconds"] = c["seconds"]
        if attempts[-1]["ok"]:
            break
    md = [f"# {recipe['recipe'].get('name', path.stem)}\n",
          f"Model: {work / 'run'} — val perplexity {ref_ppl:.2f} (eval windows) after {summary['step']} steps\n"]
    md += [report.to_markdown(r) for r in attempts[-1]["bench"].values()]
    text = "\n".join(md) + "\n" + gates.to_markdown(attempts)
    (work / "report.md").write_text(text)
    log(text)
    return {"train": summary, "bench": attempts[-1]["bench"], "attempts": attempts, "ok": attempts[-1]["ok"]}
