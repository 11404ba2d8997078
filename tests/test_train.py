import json

import pytest
import torch

from conftest import TINY_SETS
from litelm_edge.config import UserError, override, parse_sets, split_sets
from litelm_edge.pipeline import checkpoint as ckpt
from litelm_edge.pipeline.model import preset
from litelm_edge.pipeline.train import TrainConfig, lr_at


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


def test_resume_after_a_real_kill_restores_the_optimizer(data_dir, tmp_path):
    """`train` SIGKILLed once it has saved a checkpoint; `--resume` goes on from that step with the
    history carried over and AdamW's state restored (its step count runs on, not from 0)."""
    import signal
    import subprocess
    import sys
    import time
    run = tmp_path / "run"
    sets = [a for s in TINY_SETS + ["eval_every=5", "batch_size=4", "block_size=32", "eval_batches=1",
                                    "warmup_steps=2"]
            for a in ("--set", s)]
    cmd = [sys.executable, "-m", "litelm_edge.cli", "train", "--data", str(data_dir), "--out", str(run),
           *sets]
    p = subprocess.Popen([*cmd, "--set", "max_steps=100000"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run / "latest").is_file() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    killed_at = ckpt.load(run)[2]["step"]  # the newest whole checkpoint: a save cut short is not one
    r = subprocess.run([*cmd, "--resume", "--set", f"max_steps={killed_at + 5}"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    t = ckpt.load(run)[2]
    assert t["step"] == killed_at + 5 and (run / "latest").read_text().strip() == f"ckpt-{killed_at + 5:06d}"
    # carried over, not restarted
    assert [h["step"] for h in t["history"]] == list(range(5, killed_at + 6, 5))
    opt = torch.load(ckpt.resolve(run) / "optimizer.pt", weights_only=False)
    steps = {int(s["step"]) for s in opt["optimizer"]["state"].values()}
    assert steps == {killed_at + 5}, f"AdamW state steps {steps}: the optimizer was not restored"


def test_lr_schedule():
    c = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55) and lr_at(110, c) == pytest.approx(0.1)


# A process that re-saves checkpoint RUN/NAME with changed weights and is SIGKILLed the moment
# model.safetensors is written: a real crash in the middle of a save, no cleanup possible.
KILL_MID_SAVE = """
import os, signal, sys, torch, safetensors.torch
from litelm_edge.pipeline import checkpoint as ckpt
run, name = sys.argv[1], sys.argv[2]
model, tok, training = ckpt.load(f"{run}/{name}")
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)  # other weights than the good checkpoint's
real = safetensors.torch.save_file
def save_then_die(*a, **k):
    real(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
safetensors.torch.save_file = save_then_die
ckpt.save(f"{run}/{name}", model, tok, dict(training, step=training["step"] + 1))
"""


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_kill_during_save_keeps_previous_checkpoint(tiny_run, tmp_path):
    """SIGKILL after the new model.safetensors is written: the old weights, their sha256 and
    `latest` are all still the previous checkpoint's."""
    import shutil
    import signal
    import subprocess
    import sys
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("tb"))
    name = (run / "latest").read_text().strip()
    model, _, training = ckpt.load(run)
    before = _weights(model)
    p = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(run), name], capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert (run / "latest").read_text().strip() == name
    assert ckpt.sha256_file(run / name / "model.safetensors") == training["model_sha256"]
    model, _, after = ckpt.load(run)  # verifies the sha256 itself, and must not raise
    assert after["step"] == training["step"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # only a hidden .tmp-* may stay
    assert not list(run.glob(f"{name}.*")) and not list(run.glob(f".{name}.old-*"))


def test_failed_save_leaves_no_temporary_folder(tiny_run, tmp_path, monkeypatch):
    """A save that fails with an exception (disk full) removes its temporary folder."""
    import shutil
    import safetensors.torch
    good = tmp_path / "c"
    shutil.copytree(ckpt.resolve(tiny_run), good)
    model, tok, training = ckpt.load(good)
    with torch.no_grad():
        model.norm.weight.add_(1.0)
    real = safetensors.torch.save_file

    def full_after_write(*a, **k):
        real(*a, **k)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", full_after_write)
    with pytest.raises(UserError, match=f"^disk full writing {good}: free space there and retry"):
        ckpt.save(good, model, tok, training)
    assert ckpt.load(good)[2]["model_sha256"] == training["model_sha256"]  # still the good one
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
    sets = [a for s in TINY_SETS + ["max_steps=6", "eval_every=6", "batch_size=4", "block_size=32",
                                    "eval_batches=2"]
            for a in ("--set", s)]
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={port}", "-m", "litelm_edge.cli", "train", "--data", str(data_dir),
                        "--out", str(tmp_path / "run"), *sets],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    t = ckpt.load(tmp_path / "run")[2]
    assert t["world_size"] == 2 and t["step"] == 6
    assert t["tokens_seen_this_run"] == 6 * 4 * 32 * 2
