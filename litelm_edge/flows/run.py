"""run: a recipe (recipes/NAME.toml) end to end — data -> train -> compress -> build -> bench -> report.

With [gates] and [[compress]] steps (see gates.py) the build/bench part repeats: attempt 0 ships the
trained model, and while a gate fails, attempt k applies compression step k, up to max_attempts.

Each step's output lands in the recipe's workdir under a name keyed on every input: data-KEY (the
data settings and the content of each input file), run-KEY (the data, the whole model and train
config). A step whose output is already there is reused, so a second run only redoes what
changed, and a changed setting never returns an old result.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..config import override, to_dict
from .recipe import Recipe, load_recipe


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def point(link: Path, target: Path):
    """work/data, work/run: symlinks to the current keyed folder, replaced atomically, so
    `--checkpoint runs/quickstart/run` names the run the last `litelm-edge run` used."""
    if link.exists() and not link.is_symlink():
        return  # a folder of the older layout: left as it is
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    os.replace(tmp, link)


def data_key(r: Recipe, inputs: list[str]) -> str:
    """Every input of the data step: its settings and the content of each input file."""
    from ..files import sha256_file
    from ..pipeline.data import expand_inputs
    files = expand_inputs(inputs) + ([Path(r.data.tokenizer)] if r.data.tokenizer else [])
    return _key(to_dict(r.data), inputs, [(str(f), sha256_file(f)) for f in files])


def step_data(r: Recipe, work: Path, log) -> Path:
    """work/data-KEY: made once per distinct input; a changed vocab or file makes a new one."""
    from ..pipeline.data import DataConfig, default_corpus, prepare
    inputs = [str(default_corpus()) if i == "default" else i for i in r.data.inputs]
    out = work / f"data-{data_key(r, inputs)}"
    if (out / "meta.json").is_file():
        log(f"data: reusing {out} (same inputs and settings)")
    else:
        prepare(inputs, out, r.data.tokenizer, r.data.vocab, override(DataConfig(), r.data.set), log)
    point(work / "data", out)
    return out


def step_train(r: Recipe, data: Path, work: Path, log) -> tuple[Path, dict]:
    """work/run-KEY, keyed on the data and the whole model and train config: an interrupted run
    resumes with its own settings, a changed setting trains a new run."""
    from dataclasses import asdict
    from ..config import split_sets
    from ..pipeline.model import preset
    from ..pipeline.train import TrainConfig, train
    model_sets, rest = split_sets(dict(r.train.set), "model")
    cfg, model_cfg = override(TrainConfig(), rest, "recipe [train.set]"), preset(r.train.preset, model_sets)
    run = work / f"run-{_key(data.name, asdict(model_cfg), asdict(cfg))}"
    log(f"train: preset {r.train.preset}, {cfg.max_steps} steps -> {run}")
    summary = train(data, run, model_cfg, cfg, resume=True, log=log)
    point(work / "run", run)
    return run, summary


def step_compress(step, src: Path, data: Path, work: Path, k: int, log) -> dict:
    """Apply one [[compress]] step (method + set) to checkpoint `src` -> work/compress-k-METHOD."""
    from ..pipeline.compress import compress
    out = work / f"compress-{k}-{step.method}"
    log(f"compress: attempt {k} applies {step.method} {step.set}")
    return compress(step.method, src, data, out, dict(step.set), log=log)


def attempt(k: int, label: str, ckpt: Path, recipe: Recipe, data: Path, work: Path, ref_ppl: float, log) -> dict:
    """Build, eval (through the runtime) and bench every target; judge the gates."""
    from . import gates
    from ..devices.bench import bench
    from ..reports import report
    from ..pipeline.eval import eval_artifact, eval_checkpoint
    from .build import ParityError, build
    from dataclasses import asdict
    b, gates_table = recipe.build, to_dict(recipe.gates)
    c = eval_checkpoint(ckpt, data)
    a = {"attempt": k, "step": label, "checkpoint": str(ckpt), "n_params": c["n_params"],
         "ckpt_ppl": c["ppl"], "targets": [], "bench": {}, "reports": {}}
    for target in b.targets:
        art = work / "artifacts" / f"{target}-{b.precision or 'default'}" / f"attempt-{k}"
        try:
            m = build(ckpt, target, art, b.precision, data, log=log)
        except ParityError as e:  # a failed gate of this attempt, not the end of the run
            log(f"build: {target}: {e}")
            a["targets"].append({"target": target, "precision": b.precision or "default", "size_mb": None,
                                 "ppl": None, "ok": False, "gates": [
                                     {"gate": "build parity", "value": e.parity["ppl_ratio"],
                                      "limit": e.parity["rule"], "pass": False,
                                      "note": "artifact vs torch on held-out text; not written, not benched"}]})
            continue
        log(f"build: {target}/{m['precision']} {m['size_bytes'] / 1e6:.2f} MB, ppl ratio "
            f"{m['parity']['ppl_ratio']:.4f}, mean KL {m['parity']['mean_kl']:.4f}")
        ppl = eval_artifact(art, data)["ppl"]
        r = bench(art, asdict(recipe.bench), log=log)
        a["reports"][target] = str(report.write(r, art)["html"])  # the quick start prints where it went
        rows = gates.judge(gates_table, ref_ppl, ppl, r)
        a["targets"].append({"target": target, "precision": m["precision"], "size_mb": m["size_bytes"] / 1e6,
                             "ppl": ppl, "gates": rows, "ok": gates.passed(rows)})
        a["bench"][target] = r
    a["ok"] = all(t["ok"] for t in a["targets"])
    return a


def run_recipe(name: str, sets: dict | None = None, log=print, until: str | None = None) -> dict:
    """data -> train -> [compress -> build -> eval -> bench -> gates] until the gates pass.
    The whole recipe is checked before the first step runs. until="train" stops after training
    (CI's train job: each device job builds the checkpoint)."""
    from ..pipeline.eval import eval_checkpoint
    path, recipe = load_recipe(name, sets)
    steps = recipe.compress
    work = Path(recipe.recipe.workdir or f"runs/{path.stem}")
    data = step_data(recipe, work, log)
    run, summary = step_train(recipe, data, work, log)
    log(f"train: step {summary['step']}, val loss {summary['val_loss']:.4f}, val ppl {summary['val_ppl']:.2f}")
    if until == "train":
        return {"train": summary, "checkpoint": str(run), "data": str(data), "ok": True}
    ref_ppl = eval_checkpoint(run, data)["ppl"]
    attempts, ckpt, label = [], run, "trained model, no compression"
    for k in range(min(recipe.gates.max_attempts, len(steps) + 1)):
        if k > 0:  # step k starts from the trained model, or from the last attempt with from = "previous"
            src = ckpt if steps[k - 1].from_ == "previous" else run
            c = step_compress(steps[k - 1], src, data, work, k, log)
            ckpt, label = Path(c["checkpoint"]), f"{steps[k - 1].method} {steps[k - 1].set}"
            label += f" ({c['note']})" if c.get("note") else ""
        attempts.append(attempt(k, label, ckpt, recipe, data, work, ref_ppl, log))
        if k > 0:
            attempts[-1]["seconds"] = c["seconds"]
        if attempts[-1]["ok"]:
            break
    return _report(recipe, path, work, run, summary, ref_ppl, attempts, log)


def _report(recipe: Recipe, path: Path, work: Path, run: Path, summary: dict, ref_ppl: float, attempts: list,
            log) -> dict:
    from . import gates
    from ..reports import report
    md = [f"# {recipe.recipe.name or path.stem}\n",
          f"Model: {run} — val perplexity {ref_ppl:.2f} (eval windows) after {summary['step']} steps\n"]
    md += [report.to_markdown(r) for r in attempts[-1]["bench"].values()]
    text = "\n".join(md) + "\n" + gates.to_markdown(attempts)
    (work / "report.md").write_text(text)
    log(text)
    for target, html in attempts[-1]["reports"].items():
        log(f"bench report ({target}): {html}")
    log(f"run report: {work / 'report.md'}")
    return {"train": summary, "bench": attempts[-1]["bench"], "attempts": attempts, "ok": attempts[-1]["ok"],
            "run": str(run), "data": str(Path(summary.get("data_dir", "")))}
