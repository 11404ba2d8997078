import json

import pytest

from conftest import TINY_SETS
from litelm_edge import checkpoint as ckpt
from litelm_edge.config import UserError, override, parse_sets, split_sets
from litelm_edge.model import preset
from litelm_edge.train import TrainConfig, lr_at, train


def cfg(**kw):
    base = dict(max_steps=40, eval_every=20, batch_size=8, block_size=64, warmup_steps=5, eval_batches=4)
    return override(TrainConfig(), dict(base, **kw))


def model_cfg():
    return preset("tiny", split_sets(parse_sets(TINY_SETS), "model")[0])


def test_loss_decreases(tiny_run):
    t = json.loads((ckpt.resolve(tiny_run) / "training.json").read_text())
    h = t["history"]
    assert h[-1]["val_loss"] < h[0]["val_loss"] < 6.3  # 6.24 = ln(512), the untrained loss
    assert t["step"] == 60 and (tiny_run / "tb").is_dir() and any((tiny_run / "tb").iterdir())


def test_resume_continues_from_saved_step(data_dir, tmp_path):
    run = tmp_path / "run"
    train(data_dir, run, model_cfg(), cfg(max_steps=20), log=lambda m: None)
    assert ckpt.load(run)[2]["step"] == 20
    s = train(data_dir, run, model_cfg(), cfg(max_steps=40), resume=True, log=lambda m: None)
    assert s["step"] == 40
    assert [h["step"] for h in s["history"]] == [20, 40]  # history carried over, not restarted
    assert (run / "latest").read_text().strip() == "ckpt-000040"


def test_lr_schedule():
    c = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55) and lr_at(110, c) == pytest.approx(0.1)


def test_crash_during_save_keeps_previous_checkpoint(tiny_run, tmp_path, monkeypatch):
    import shutil
    import safetensors.torch
    good = tmp_path / "c"
    shutil.copytree(ckpt.resolve(tiny_run), good)
    model, tok, training = ckpt.load(good)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        ckpt.save(good, model, tok, training)
    assert ckpt.load(good)[2]["step"] == training["step"]  # still the good one
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temporary folder left


def test_corrupt_checkpoint_is_detected(tiny_run, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(ckpt.resolve(tiny_run), bad)
    with open(bad / "model.safetensors", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 50)
    with pytest.raises(UserError, match="sha256"):
        ckpt.load(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt config"):
        ckpt.load(bad)
    with pytest.raises(UserError, match="not found"):
        ckpt.load(tmp_path / "nope")


@pytest.mark.slow
def test_ddp_with_torchrun_two_processes(data_dir, tmp_path):
    """torchrun launches two CPU workers (gloo); rank 0 writes the checkpoint, world size 2."""
    import os
    import subprocess
    import sys
    sets = [a for s in TINY_SETS + ["max_steps=6", "eval_every=6", "batch_size=4", "block_size=32", "eval_batches=2"]
            for a in ("--set", s)]
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                        "-m", "litelm_edge.cli", "train", "--data", str(data_dir), "--out", str(tmp_path / "run"), *sets],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    t = ckpt.load(tmp_path / "run")[2]
    assert t["world_size"] == 2 and t["step"] == 6
    assert t["tokens_seen_this_run"] == 6 * 4 * 32 * 2
