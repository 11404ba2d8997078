"""LiteRT backend: the fixed-cache graph, conversion of a tiny model, INT8 really INT8, sizes.

Conversion needs the toolchain venv (tools/setup-litert.sh); the tests that need it skip when it
cannot be made. A random-weight tiny model (4 layers, 128 wide) converts in ~15 s per precision.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from litelm_edge import backend_litert, checkpoint  # noqa: E402
from litelm_edge.config import UserError  # noqa: E402
from litelm_edge.litert_graph import CachedLM  # noqa: E402
from litelm_edge.model import Transformer, preset  # noqa: E402

TARGET = {"target": {"backend": "litert"}, "litert": {"prefill_len": 16, "capacity": 64},
          "thresholds": {"max_size_mb": 15}}


def tiny_model():
    torch.manual_seed(0)
    return Transformer(preset("tiny")).eval()


def test_fixed_cache_graph_matches_forward():
    m = tiny_model()
    g = CachedLM(m, capacity=32)
    idx = torch.randint(0, m.cfg.vocab_size, (1, 12))
    with torch.no_grad():
        ref = m(idx)[0]
        out = g(idx[:, :8].int(), torch.arange(8, dtype=torch.int32), **g.empty_cache())
        caches = {k: v for k, v in out.items() if k != "logits"}
        step = g(idx[:, 8:9].int(), torch.tensor([8], dtype=torch.int32), **caches)
    assert torch.allclose(out["logits"], ref[:, :8], atol=1e-5)
    assert torch.allclose(step["logits"][0, 0], ref[0, 8], atol=1e-5)


def test_settings_and_size_verdict():
    with pytest.raises(UserError, match="multiple of prefill_len"):
        backend_litert.settings({"litert": {"prefill_len": 64, "capacity": 100}})
    with pytest.raises(UserError, match="unknown key"):
        backend_litert.settings({"litert": {"thread": 4}})
    v = backend_litert.size_verdict(26_100_000, TARGET)
    assert not v["meets_size"] and "android-15mb" in v["size_note"]
    assert backend_litert.size_verdict(14_700_000, TARGET)["meets_size"]


@pytest.fixture(scope="module")
def toolchain():
    from litelm_edge import litert_toolchain
    pytest.importorskip("ai_edge_litert")
    try:
        return litert_toolchain.ensure()
    except (UserError, OSError) as e:
        pytest.skip(f"LiteRT toolchain venv cannot be made: {e}")


@pytest.fixture(scope="module")
def built(toolchain, tmp_path_factory):
    """{precision: (artifact dir, build result)} for a tiny random-weight checkpoint."""
    root = tmp_path_factory.mktemp("litert")
    ck = checkpoint.save(root / "ck", tiny_model(), "{}", {"step": 0})
    rng = np.random.default_rng(0)
    heldout = [rng.integers(0, 4096, 200).astype(np.int64)]
    out = {}
    for precision in ("fp32", "int8"):
        d = root / precision
        d.mkdir()
        ctx = types.SimpleNamespace(model=None, checkpoint=ck, target=TARGET, out_dir=d,
                                    precision=precision, heldout=heldout, log=lambda m: None)
        out[precision] = (d, backend_litert.build(ctx))
    return out


def runtime(art_dir):
    from litelm_edge.runtime_litert import LiteRTRuntime
    return LiteRTRuntime(art_dir, {}, threads=1)


def greedy(rt, prompt, n):
    logits, out = rt.prefill(prompt)[-1], []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = rt.decode(out[-1])
    return out


def test_golden_greedy_tokens_equal_torch(built):
    m = tiny_model()
    prompt = np.random.default_rng(1).integers(0, 4096, 20)  # > prefill_len: two prefill chunks
    want = m.generate(torch.from_numpy(prompt)[None], 24)[0, 20:].tolist()
    assert greedy(runtime(built["fp32"][0]), prompt, 24) == want


def test_int8_is_int8_and_agrees(built):
    from litelm_edge.litert_inspect import weight_dtypes
    d, res = built["int8"]
    assert weight_dtypes(d / "model.tflite") == {"int8"}
    assert res["extra"]["weight_dtypes"] == ["int8"]
    fp32_report = {"breakdown": built["fp32"][1]["extra"]["size_breakdown"]}
    with pytest.raises(UserError, match="float32 weights"):
        backend_litert.check_precision("int8", fp32_report)
    ids = np.random.default_rng(2).integers(0, 4096, 48)
    ref = tiny_model()(torch.from_numpy(ids)[None])[0][0].detach().numpy()
    got = runtime(d).prefill(ids)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.95


def test_size_breakdown_sums_to_file_size(built):
    for d, res in built.values():
        b = res["extra"]["size_breakdown"]
        parts = sum(b[k] for k in ("embeddings", "attention", "mlp", "head", "other"))
        assert parts == b["total"] == os.path.getsize(Path(d) / "model.tflite")
    b = built["fp32"][1]["extra"]["size_breakdown"]
    assert b["other"] < 0.05 * b["total"]  # the weights are where the bytes are
    assert b["embeddings"] == 4096 * 128 * 4  # tied: stored once for both signatures


DEVICE_SCRIPT = """
import json, sys, numpy as np
sys.path.insert(0, "/tmp/art")
from runtime_litert import LiteRTRuntime
rt = LiteRTRuntime("/tmp/art", {}, 2)
ids = np.array(json.loads(sys.argv[1]), np.int64)
logits = rt.prefill(ids)
out, last = [], logits[-1]
for _ in range(8):
    out.append(int(last.argmax())); last = rt.decode(out[-1])
import platform
print(json.dumps(dict(machine=platform.machine(), runtime=rt.runtime_name,
                      top1=logits.argmax(-1).tolist(), greedy=out)))
"""


def _emulator():
    import importlib.util
    path = Path(__file__).resolve().parent.parent / "tools" / "emulated_device.py"
    if not path.is_file():
        pytest.skip("tools/emulated_device.py not here (branch emu not merged)")
    spec = importlib.util.spec_from_file_location("emulated_device", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["emulated_device"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _push(dev, local: Path, remote: str):
    import subprocess
    r = subprocess.run(dev.ssh_args() + [f"cat > {remote}"], input=local.read_bytes(),
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_emulated_arm64_device_runs_int8_with_parity(built, tmp_path):
    """The android artifact on an arm64 Debian (qemu-user) over SSH: on-device parity vs torch."""
    import json
    emu = _emulator()
    ok, why = emu.enable_binfmt()
    if not ok:
        pytest.skip(why)
    try:
        rootfs = emu.build_rootfs(packages=emu.DEFAULT_PACKAGES)
    except emu.DeviceError as e:
        pytest.skip(f"no arm64 rootfs: {e}")
    art = built["int8"][0]
    (tmp_path / "run.py").write_text(DEVICE_SCRIPT)
    ids = np.random.default_rng(3).integers(0, 4096, 24)
    with emu.start_device(rootfs) as dev:
        assert dev.ssh("mkdir -p /tmp/art").returncode == 0
        _push(dev, art / "model.tflite", "/tmp/art/model.tflite")
        _push(dev, Path(backend_litert.__file__).parent / "runtime_litert.py", "/tmp/art/runtime_litert.py")
        _push(dev, tmp_path / "run.py", "/tmp/art/run.py")
        r = dev.ssh(f"python3 /tmp/art/run.py '{json.dumps(ids.tolist())}'", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["machine"] == "aarch64" and got["runtime"] == "ai_edge_litert"
    ref = tiny_model()(torch.from_numpy(ids)[None])[0][0].detach().numpy().argmax(-1)
    assert (np.array(got["top1"]) == ref).mean() >= 0.95
    assert got["greedy"] == greedy(runtime(art), ids, 8)  # same tokens as LiteRT on the host
