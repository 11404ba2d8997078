"""Perplexity of checkpoints and of artifacts through their runtime, on the same windows."""
import math

import numpy as np
import pytest

from conftest import cli
from litelm_edge.config import UserError
from litelm_edge.pipeline import checkpoint as ckpt
from litelm_edge.pipeline.eval import EvalConfig, eval_artifact, eval_checkpoint, nll, val_windows


def test_nll_matches_torch_cross_entropy():
    import torch
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(5, 11)).astype(np.float32), rng.integers(0, 11, 5)
    want = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets),
                                             reduction="sum")
    assert nll(logits, targets) == pytest.approx(float(want), rel=1e-5)


def test_windows_are_held_out_and_capped(data_dir):
    w = val_windows(data_dir, EvalConfig(windows=4, window_len=500), max_seq_len=64)
    assert len(w) == 4 and all(len(x) == 65 for x in w)
    with pytest.raises(UserError, match="no held-out data"):
        val_windows(data_dir / "nope", EvalConfig(), 64)


def test_checkpoint_ppl_agrees_with_training_val_loss(tiny_run, data_dir):
    r = eval_checkpoint(tiny_run, data_dir)
    t = ckpt.load(tiny_run)[2]
    assert r["runtime"] == "torch" and r["tokens"] > 500
    assert abs(math.log(r["ppl"]) - t["val_loss"]) < 0.15  # other windows, same model


@pytest.fixture
def artifacts(x86_fp32, x86_int8):
    """conftest's session artifacts, by precision (read-only)."""
    return {"fp32": x86_fp32, "int8": x86_int8}


def test_fp32_artifact_equals_checkpoint(artifacts, tiny_run, data_dir):
    a, c = eval_artifact(artifacts["fp32"], data_dir), eval_checkpoint(tiny_run, data_dir)
    assert a["runtime"] == "onnxruntime" and a["tokens"] == c["tokens"]
    assert a["ppl"] == pytest.approx(c["ppl"], rel=1e-3)


def test_int8_artifact_is_measured_not_assumed(artifacts, tiny_run, data_dir):
    a, c = eval_artifact(artifacts["int8"], data_dir), eval_checkpoint(tiny_run, data_dir)
    assert a["precision"] == "int8" and a["ppl"] != c["ppl"]
    assert a["ppl"] < 1.5 * c["ppl"]  # PTQ costs something, not everything


def test_eval_cli(artifacts, tiny_run, data_dir):
    r = cli("eval", "--artifact", artifacts["fp32"], "--data", data_dir, "--set", "windows=4")
    assert "artifact (onnxruntime): val ppl" in r.stdout
    r = cli("eval", "--checkpoint", tiny_run, "--artifact", artifacts["fp32"], check=False)
    assert r.returncode == 2 and "exactly one" in r.stderr
    r = cli("eval", "--checkpoint", tiny_run, "--set", "windowz=3", check=False)
    assert r.returncode == 2 and "unknown key 'windowz'" in r.stderr
