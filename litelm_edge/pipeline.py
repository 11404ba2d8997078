"""run: a recipe (recipes/NAME.toml) end to end — data -> train -> build -> bench -> report.

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


def run_recipe(name: str, sets: dict | None = None, log=print) -> dict:
    from . import report
    from .bench import bench
    from .export import build
    path, recipe = named_toml("recipes", name)
    recipe = _apply_sets(recipe, sets or {})
    for table in ("recipe", "data", "train", "build"):
        if table not in recipe:
            raise UserError(f"{path}: recipe needs a [{table}] table")
    work = Path(recipe["recipe"].get("workdir", f"runs/{path.stem}"))
    data = step_data(recipe, work, log)
    summary = step_train(recipe, data, work, log)
    log(f"train: step {summary['step']}, val loss {summary['val_loss']:.4f}, val ppl {summary['val_ppl']:.2f}")
    results, md = {}, [f"# {recipe['recipe'].get('name', path.stem)}\n",
                       f"Model: {work / 'run'} — val perplexity {summary['val_ppl']:.2f} after {summary['step']} steps\n"]
    for target in recipe["build"]["targets"]:
        art = work / "artifacts" / f"{target}-{recipe['build'].get('precision', 'default')}"
        m = build(work / "run", target, art, recipe["build"].get("precision"), data, log=log)
        log(f"build: {target}/{m['precision']} {m['size_bytes'] / 1e6:.2f} MB, parity top-1 {m['parity']['top1_agreement']:.3f}")
        r = bench(art, {k: v for k, v in recipe.get("bench", {}).items()}, log=log)
        report.write(r, art)
        results[target] = r
        md.append(report.to_markdown(r))
    text = "\n".join(md)
    (work / "report.md").write_text(text)
    log(text)
    return {"train": summary, "bench": results}
