"""Shared fixtures: a corpus the tests write, and a tiny model trained on it in seconds."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["sshd"]  # real OpenSSH server fixtures: sshd, netns_sshd, ssh_home (tests/sshd.py)

WORDS = ("the king queen lord lady sword crown night day love war peace heart blood fair foul "
         "speak hear see know come go stay fly rise fall sweet bitter old young good ill").split()


def write_corpus(d: Path, n_docs: int = 300, seed: int = 0) -> Path:
    """Small English-like corpus with structure a 2-layer model learns in a few dozen steps."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(n_docs):
        who = rng.choice(["KING", "QUEEN", "LORD", "LADY"])
        lines = [f"{who}:"] + [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "."
                                for _ in range(rng.randint(3, 6))]
        docs.append("\n".join(lines))
    (d / "plays.txt").write_text("\n\n".join(docs))
    return d


TINY_SETS = ["model.n_layer=2", "model.n_embd=64", "model.n_head=4", "model.n_kv_head=2",
             "model.intermediate_size=128", "model.vocab_size=512", "model.max_seq_len=128"]
TINY_TRAIN = ["max_steps=60", "eval_every=30", "batch_size=8", "block_size=64", "warmup_steps=5", "eval_batches=4"]


def toolchain_or_skip(make, what: str):
    """A toolchain venv, or skip saying why; under tools/test.sh (CI), which sets
    LITELM_EDGE_REQUIRE_TOOLCHAINS=1 after making them, a missing toolchain fails instead."""
    import os
    try:
        return make()
    except Exception as e:  # UserError from toolchain.ensure, OSError from a full disk
        if os.environ.get("LITELM_EDGE_REQUIRE_TOOLCHAINS") == "1":
            pytest.fail(f"{what} toolchain venv cannot be made, and this run requires it: {e}")
        pytest.skip(f"{what} toolchain venv cannot be made here: {e}")


def cli(*args, check=True, env=None):
    """Run the real console entry point in a subprocess; returns CompletedProcess."""
    r = subprocess.run([sys.executable, "-m", "litelm_edge.cli", *map(str, args)], capture_output=True, text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"litelm-edge {' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def data_dir(corpus, tmp_path_factory):
    from litelm_edge.data import prepare
    out = tmp_path_factory.mktemp("data") / "d"
    prepare([corpus], out, vocab_size=512, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
    """A trained 2-layer checkpoint (run folder) on the test corpus."""
    from litelm_edge.config import override, parse_sets, split_sets
    from litelm_edge.model import preset
    from litelm_edge.train import TrainConfig, train
    run = tmp_path_factory.mktemp("run") / "r"
    msets, _ = split_sets(parse_sets(TINY_SETS), "model")
    train(data_dir, run, preset("tiny", msets), override(TrainConfig(), parse_sets(TINY_TRAIN)), log=lambda m: None)
    return run
