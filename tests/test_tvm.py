"""TVM backend: golden greedy tokens on x86, an aarch64 ELF for the Pi, int8 size and agreement,
the missing-compiler line, and the rpi4 artifact on an emulated Pi (qemu-user + binfmt)."""
from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from litelm_edge import backend_tvm, checkpoint  # noqa: E402
from litelm_edge.config import UserError, named_toml  # noqa: E402
from litelm_edge.model import Transformer, preset  # noqa: E402

EM_AARCH64 = 183  # ELF e_machine of aarch64


@pytest.fixture(scope="module")
def tvm_python():
    try:
        return backend_tvm.python()
    except UserError as e:
        pytest.skip(f"TVM toolchain venv cannot be made here: {e}")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = Transformer(preset("tiny", {"n_layer": 2}))
    with torch.no_grad():  # peaked logits, so top-1 measures the int8 error rather than ties
        model.embed_tokens.weight.mul_(30)
    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "tiny", model, "{}", {"step": 0})


def build(ckpt: Path, target: str | dict, precision: str, out: Path) -> dict:
    """backend_tvm.build with the context export.build hands it."""
    data = named_toml("targets", target)[1] if isinstance(target, str) else target
    model, _, _ = checkpoint.load(ckpt)
    out.mkdir(parents=True)
    ctx = types.SimpleNamespace(model=model, checkpoint=ckpt, target=data, out_dir=out,
                                precision=precision, heldout=[], log=lambda m: None)
    return dict(backend_tvm.build(ctx), out_dir=out)


def greedy(step_prefill, step_decode, prompt: np.ndarray, n: int) -> list[int]:
    logits = step_prefill(prompt)[-1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = step_decode(out[-1])
    return out


def torch_runtime(ckpt):
    model = checkpoint.load(ckpt)[0]
    state = {}

    def prefill(ids):
        k, v = model.empty_cache()
        with torch.no_grad():
            logits, state["k"], state["v"] = model.forward_cached(torch.from_numpy(ids)[None], k, v)
        return logits[0].numpy()

    def decode(tok):
        with torch.no_grad():
            logits, state["k"], state["v"] = model.forward_cached(torch.tensor([[tok]]), state["k"], state["v"])
        return logits[0, -1].numpy()
    return prefill, decode


@pytest.fixture(scope="module")
def builds(tvm_python, tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("builds")
    return {key: build(tiny_ckpt, tgt, prec, root / f"{key}")
            for key, tgt, prec in [("x86", "x86-tvm", "fp32"), ("rpi4", "rpi4", "fp32"),
                                   ("rpi4-int8", "rpi4", "int8")]}


@pytest.mark.slow
def test_x86_greedy_tokens_equal_torch(builds, tiny_ckpt):
    rt = builds["x86"]["parity_runtime"]
    prompt = np.arange(1, 17, dtype=np.int64)
    want = greedy(*torch_runtime(tiny_ckpt), prompt, 24)
    assert greedy(rt.prefill, rt.decode, prompt, 24) == want
    ref = torch_runtime(tiny_ckpt)[0](prompt)
    assert np.abs(rt.prefill(prompt) - ref).max() < 1e-3


@pytest.mark.slow
def test_rpi4_library_is_aarch64_elf(builds):
    head = (builds["rpi4"]["out_dir"] / "model.so").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == EM_AARCH64


@pytest.mark.slow
def test_rpi4_int8_is_a_quarter_and_agrees(builds, tiny_ckpt):
    w8 = builds["rpi4-int8"]["extra"]["tvm"]["weight_bytes"]
    w32 = builds["rpi4"]["extra"]["tvm"]["weight_bytes"]
    assert sum(w8.values()) / sum(w32.values()) < 0.27
    rt, ref = builds["rpi4-int8"]["parity_runtime"], torch_runtime(tiny_ckpt)[0]
    rng = np.random.default_rng(0)
    agree = []
    for _ in range(4):
        ids = rng.integers(0, 4096, 64)
        agree.append(np.mean(rt.prefill(ids).argmax(-1) == ref(ids).argmax(-1)))
    assert np.mean(agree) >= 0.95, agree


def test_missing_cross_compiler_is_one_clear_line(tiny_ckpt, tmp_path):
    target = {"target": {"backend": "tvm"}, "tvm": {"target": "raspberry-pi/4b-aarch64",
                                                    "cc": "no-such-aarch64-g++", "cc_package": "g++-aarch64-linux-gnu"}}
    with pytest.raises(UserError, match=r"^no-such-aarch64-g\+\+ not found: apt-get install g\+\+-aarch64-linux-gnu"):
        build(tiny_ckpt, target, "fp32", tmp_path / "out")
