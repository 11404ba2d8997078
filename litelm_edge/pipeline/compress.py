"""compress: checkpoint -> smaller or int8-ready checkpoint, fine-tuned and measured.

    litelm-edge compress qat     --checkpoint RUN --data DIR --out RUN2 [--set weight_qmax=64]
    litelm-edge compress prune   ... --set sparsity=0.5 | threshold=0.01 | ffn=0.5 heads=0.5 layers=1
    litelm-edge compress distill --checkpoint TEACHER ... --set student=tiny --set model.n_layer=2
    litelm-edge compress share   ... --set every=2

Each method is one module (quant, prune, distill, share); this one does what they share: the
fine-tuning (`train.*` keys edit a short TrainConfig), the perplexity before and after on the same
held-out windows, the wall time, and a `compression` record in the checkpoint's training.json.
The output is a normal run folder: build, bench and eval take it like any other.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ..config import UserError, override, split_sets

METHODS = ("qat", "prune", "distill", "share")
FINETUNE = {"max_steps": 100, "lr": 1e-3, "warmup_steps": 10, "eval_every": 100, "min_lr_ratio": 0.1}


def finetune(model, data_dir, out, tc, extra: dict, log, loss_fn=None) -> dict:
    """train() on an existing model; max_steps = 0 saves it as it is (no fine-tuning)."""
    from . import checkpoint as ckpt
    from .train import train
    out = Path(out)
    if tc.max_steps > 0:
        return train(data_dir, out, model.cfg, tc, model=model, loss_fn=loss_fn, extra=extra, log=log)
    tok = (Path(data_dir) / "tokenizer.json").read_text()
    ckpt.save(out / "ckpt-000000", model, tok, dict(extra, step=0, data_dir=str(Path(data_dir).resolve())))
    ckpt.update_latest(out, "ckpt-000000")
    return {"step": 0}


def resave(out, model, more: dict):
    """Overwrite the run's latest checkpoint with `model` (after snapping), merging `more`."""
    import json
    from . import checkpoint as ckpt
    p = ckpt.resolve(out)
    training = json.loads((p / "training.json").read_text())
    ckpt.save(p, model, (p / "tokenizer.json").read_text(), dict(training, **more))


def method_qat(base, data_dir, out, sets, model_sets, tc, log) -> dict:
    from . import quant
    c = override(quant.QATConfig(), sets, "--set (qat)")
    model = quant.enable(base, c)
    finetune(model, data_dir, out, tc, {"compression": {"method": "qat", **asdict(c)}}, log)
    quant.disable(model)
    n = quant.snap(model, c)
    resave(out, model, {"qat_snapped_matrices": n})
    return {"config": asdict(c), "snapped_matrices": n, "grid_error": quant.grid_error(model, c),
            "model": model}


def method_prune(base, data_dir, out, sets, model_sets, tc, log) -> dict:
    from . import prune
    c = override(prune.PruneConfig(), sets, "--set (prune)")
    model = base
    if c.heads or c.ffn or c.layers:
        model = prune.structured(base, c, _calibration(data_dir, tc))
    masks = prune.magnitude_masks(model, c) if (c.sparsity or c.threshold) else {}
    hooks = prune.apply_masks(model, masks)
    rec = {"method": "prune", **asdict(c), "sparsity_at_start": prune.sparsity(model),
           "note": "unstructured sparsity does not make dense runtimes faster or artifacts smaller"}
    finetune(model, data_dir, out, tc, {"compression": rec}, log)
    for h in hooks:
        h.remove()
    resave(out, model, {"sparsity": prune.sparsity(model)})
    res = {"config": asdict(c), "sparsity": prune.sparsity(model), "model": model}
    if res["sparsity"] > 0:
        res["note"] = (f"{res['sparsity']:.0%} of the weights are zero: unstructured sparsity does not make dense runtimes "
                       "(ORT, TVM, LiteRT) faster or artifacts smaller; structured pruning (ffn, heads, "
                       "layers) does")
    return res


def _calibration(data_dir, tc, n: int = 4):
    """A few training windows to rank blocks by (never the validation split)."""
    from .train import Batches
    b = Batches(Path(data_dir) / "train.bin", tc.block_size, n, seed=0)
    return b.sample("cpu")


def method_distill(teacher, data_dir, out, sets, model_sets, tc, log) -> dict:
    import torch
    from . import distill
    from .eval import eval_model
    from .model import Transformer, preset
    c = override(distill.DistillConfig(), sets, "--set (distill)")
    cfg = preset(c.student, dict({"vocab_size": teacher.cfg.vocab_size}, **model_sets))
    distill.check_tokenizer(teacher.tok_json, data_dir, teacher.cfg.vocab_size, cfg.vocab_size)
    torch.manual_seed(tc.seed)
    student = Transformer(cfg)
    rec = {"method": "distill", **asdict(c), "teacher_params": teacher.num_params()}
    finetune(student, data_dir, out, tc, {"compression": rec}, log,
             distill.loss_fn(teacher, c.alpha, c.temperature))
    res = {"config": asdict(c), "model": student}
    if c.baseline:  # the same student, same init, same batches, cross-entropy only
        torch.manual_seed(tc.seed)
        alone = Transformer(cfg)
        t0 = time.time()
        finetune(alone, data_dir, Path(str(out) + "-alone"), tc, {"compression": {"method": "student-alone"}},
                 log)
        res.update(alone_ppl=eval_model(alone, data_dir)["ppl"], alone_seconds=time.time() - t0,
                   alone_run=str(out) + "-alone")
    return res


def method_share(base, data_dir, out, sets, model_sets, tc, log) -> dict:
    from . import share
    c = override(share.ShareConfig(), sets, "--set (share)")
    model = share.merge_layers(base, c)
    rec = {"method": "share", **asdict(c), "params_before": base.num_params()}
    finetune(model, data_dir, out, tc, {"compression": rec}, log)
    return {"config": asdict(c), "model": model}


CONFIGS = {"qat": ("quant", "QATConfig"), "prune": ("prune", "PruneConfig"),
           "distill": ("distill", "DistillConfig"), "share": ("share", "ShareConfig")}


def check_sets(method: str, sets: dict, where: str):
    """A compression step's keys (the method's, train.*, model.*), checked before anything runs."""
    import importlib
    from .train import TrainConfig
    train_sets, rest = split_sets(dict(sets), "train")
    _, rest = split_sets(rest, "model")
    override(override(TrainConfig(), FINETUNE), train_sets, f"{where} train.*")
    module, cls = CONFIGS[method]
    override(getattr(importlib.import_module(f".{module}", __package__), cls)(), rest, where)


def compress(method: str, checkpoint, data_dir, out, sets: dict | None = None, log=print) -> dict:
    """Run one method; returns what it did, parameters and perplexity before/after, seconds."""
    from . import checkpoint as ckpt
    from .eval import eval_model
    from .train import TrainConfig
    if method not in METHODS:
        raise UserError(f"unknown compression method '{method}', have: {', '.join(METHODS)}")
    train_sets, rest = split_sets(dict(sets or {}), "train")
    model_sets, rest = split_sets(rest, "model")
    tc = override(override(TrainConfig(), FINETUNE), train_sets, "--set train.*")
    base, tok_json, _ = ckpt.load(checkpoint)
    if (Path(data_dir) / "tokenizer.json").read_text() != tok_json:
        raise UserError(f"{checkpoint} was trained with another tokenizer than {data_dir}'s: "
                        "pass the data folder it was trained on")
    base.tok_json = tok_json
    before = eval_model(base, data_dir)
    n_before = base.num_params()
    t0 = time.time()
    res = globals()[f"method_{method}"](base, data_dir, out, rest, model_sets, tc, log)
    seconds = time.time() - t0 - res.get("alone_seconds", 0.0)  # the baseline run is not this step's cost
    model = res.pop("model")
    after = eval_model(model, data_dir)
    return dict(res, method=method, checkpoint=str(ckpt.resolve(out)), seconds=seconds,
                finetune_steps=tc.max_steps, params_before=n_before, params_after=model.num_params(),
                ppl_before=before["ppl"], ppl_after=after["ppl"])
