"""Issue 23: nothing trains on nan. Non-finite settings are refused by the schema; a loss or gradient
that turns non-finite stops train with one line naming the step and keeps the last good checkpoint;
no checkpoint holding nan or inf is ever written, evaluated or built."""
from __future__ import annotations

import dataclasses
import math
import shutil
import typing

import pytest
import torch

from conftest import TINY_SETS, cli
from litelm_edge.config import UserError, override, parse_sets, split_sets
from litelm_edge.pipeline import checkpoint as ckpt
from litelm_edge.pipeline.model import preset
from litelm_edge.pipeline.train import TrainConfig, train


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "NaN", "1e999", float("nan"), float("inf")])
@pytest.mark.parametrize("key", ["lr", "beta1", "grad_clip", "weight_decay", "min_lr_ratio"])
def test_non_finite_settings_are_refused_by_the_schema(key, value):
    with pytest.raises(UserError, match=f"'{key}' must be a finite number"):
        override(TrainConfig(), {key: value}, "--set (train)")


def test_every_float_field_everywhere_refuses_nan():
    """Every dataclass the schema builds: a float field given nan is refused, never range-checked."""
    from litelm_edge.config import from_dict
    from litelm_edge.flows import recipe
    from litelm_edge.pipeline import compress, data, eval as ev
    from litelm_edge.pipeline.model import ModelConfig
    classes = {TrainConfig, ModelConfig, ev.EvalConfig, data.DataConfig}
    for mod in (recipe, compress):
        classes |= {v for v in vars(mod).values() if dataclasses.is_dataclass(v) and isinstance(v, type)}
    floats = 0
    for cls in classes:
        for f in dataclasses.fields(cls):
            if typing.get_type_hints(cls)[f.name] in (float, float | None):
                floats += 1
                with pytest.raises(UserError, match="finite"):
                    from_dict(cls, {f.name: float("nan")}, cls.__name__)
    assert floats >= 10
    with pytest.raises(UserError, match=r"'set.lr' must hold finite numbers"):  # free-form tables too
        from_dict(recipe.TrainStep, {"set": {"lr": float("inf")}}, "recipe [train]")
    with pytest.raises(UserError, match="'xs' must be a finite number, got 'nan'"):  # lists, item by item
        from_dict(Floats, {"xs": [1.0, "nan"]}, "t")


@dataclasses.dataclass
class Floats:
    xs: list[float] = dataclasses.field(default_factory=list)


def test_the_cli_refuses_lr_inf_with_one_line(data_dir, tmp_path):
    r = cli("train", "--data", data_dir, "--out", tmp_path / "run", "--set", "lr=inf", "--set", "max_steps=4",
            check=False)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: 'lr' must be a finite number, got 'inf'"], r.stderr
    assert not (tmp_path / "run").exists()


def _cfg():
    return preset("tiny", split_sets(parse_sets(TINY_SETS), "model")[0])


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    """4 good steps and a checkpoint; then the loss is made nan at step 6: stopped before the weights
    change, `latest` still names step 4, no step-6 checkpoint."""
    run = tmp_path / "run"
    c = override(TrainConfig(), parse_sets(["max_steps=4", "eval_every=2", "batch_size=2", "block_size=16",
                                            "eval_batches=1", "warmup_steps=1"]))
    train(data_dir, run, _cfg(), c, log=lambda m: None)
    assert (run / "latest").read_text().strip() == "ckpt-000004"
    good = (run / "ckpt-000004" / "model.safetensors").read_bytes()
    calls = []

    def poisoned(m, x, y):
        calls.append(1)
        loss = m(x, y)[1]
        return loss * float("nan") if len(calls) == 2 else loss

    with pytest.raises(UserError, match=r"^step 6: loss nan: training stopped; the last good checkpoint is "
                                        r".*ckpt-000004"):
        train(data_dir, run, None, override(c, {"max_steps": 8}), resume=True, loss_fn=poisoned,
              log=lambda m: None)
    assert (run / "latest").read_text().strip() == "ckpt-000004"
    assert (run / "ckpt-000004" / "model.safetensors").read_bytes() == good
    assert not list(run.glob("ckpt-000006*")) and not list(run.glob(".ckpt-*"))


def test_an_exploding_gradient_stops_the_run(data_dir, tmp_path):
    """lr=1e30 is finite, so the schema takes it; the first nan loss or gradient stops the run."""
    r = cli("train", "--data", data_dir, "--out", tmp_path / "run",
            *[a for s in TINY_SETS for a in ("--set", s)], "--set", "lr=1e30", "--set", "max_steps=6",
            "--set", "warmup_steps=0", "--set", "grad_clip=0",
            "--set", "eval_every=6", "--set", "batch_size=2", "--set", "block_size=16", "--set",
            "eval_batches=1", check=False)
    errors = [x[x.index("error: "):] for x in r.stderr.splitlines() if "error: " in x]  # beside tqdm's bar
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert errors[0].startswith("error: step ") and "no checkpoint was written" in errors[0], errors
    assert not list((tmp_path / "run").glob("ckpt-*"))


def test_no_checkpoint_with_nan_weights_is_written_evaluated_or_built(tiny_run, tmp_path):
    model, tok, training = ckpt.load(tiny_run)
    with torch.no_grad():
        model.norm.weight[3] = float("nan")
    with pytest.raises(UserError, match="not writing checkpoint .*holds nan or inf"):
        ckpt.save(tmp_path / "bad", model, tok, training)
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
    # a nan checkpoint made elsewhere (written by hand): eval and build refuse it in one line
    bad = tmp_path / "made"
    shutil.copytree(ckpt.resolve(tiny_run), bad)
    from safetensors.torch import load_file, save_file
    sd = load_file(str(bad / "model.safetensors"))
    sd["model.norm.weight"][0] = float("inf")
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    (bad / "training.json").write_text("{}")  # no recorded sha256 to trip over first
    for args in (["eval", "--checkpoint", bad],
                 ["build", "--checkpoint", bad, "--target", "x86", "--out", tmp_path / "a"]):
        r = cli(*args, check=False)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [
            f"error: checkpoint '{bad}': model.norm.weight holds nan or inf (a diverged run): use an earlier "
            "checkpoint of the run, or retrain with a lower learning rate"], r.stderr[-1500:]
    assert not (tmp_path / "a").exists()
    assert math.isnan(float("nan"))
