"""LiteRT backend: the fixed-cache graph, conversion of a tiny model, INT8 really INT8, sizes,
and the artifact on an emulated arm64 device.

Conversion needs the toolchain venv (tools/setup-litert.sh); the tests that need it skip when it
cannot be made. The conftest's trained 2-layer model converts in ~15 s per precision.
"""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import toolchain_or_skip  # noqa: E402
from litelm_edge import checkpoint  # noqa: E402
from litelm_edge.backends.litert import build as litert_build  # noqa: E402
from litelm_edge.config import UserError  # noqa: E402
from litelm_edge.backends.litert.graph import CachedLM  # noqa: E402
from litelm_edge.model import Transformer, preset  # noqa: E402

TARGET = {"target": {"backend": "litert"}, "thresholds": {"max_size_mb": 15}}


def test_fixed_cache_graph_matches_forward():
    torch.manual_seed(0)
    m = Transformer(preset("tiny")).eval()  # 4 query heads over 2 K/V groups
    g = CachedLM(m, capacity=32)
    idx = torch.randint(0, m.cfg.vocab_size, (1, 12))
    with torch.no_grad():
        ref = m(idx)[0]
        out = g(idx[:, :8].int(), torch.arange(8, dtype=torch.int32), **g.empty_cache())
        caches = {k: v for k, v in out.items() if k != "logits"}
        step = g(idx[:, 8:9].int(), torch.tensor([8], dtype=torch.int32), **caches)
    assert torch.allclose(out["logits"], ref[:, :8], atol=1e-5)
    assert torch.allclose(step["logits"][0, 0], ref[0, 8], atol=1e-5)


def test_attention_windows_match_forward_across_buckets():
    """Prefill in a small window, then decode step by step in the smallest window holding each
    position (8 -> 16 -> 32): every step's logits equal the plain forward pass at that position."""
    torch.manual_seed(1)
    m = Transformer(preset("tiny")).eval()
    windows = {w: CachedLM(m, capacity=32, window=w) for w in (8, 16, 32)}
    idx = torch.randint(0, m.cfg.vocab_size, (1, 24))
    with torch.no_grad():
        ref = m(idx)[0][0]
        out = windows[8](idx[:, :6].int(), torch.arange(6, dtype=torch.int32), **windows[8].empty_cache())
        assert torch.allclose(out.pop("logits")[0], ref[:6], atol=1e-5)
        for p in range(6, 24):
            g = windows[min(w for w in windows if p < w)]
            out = g(idx[:, p:p + 1].int(), torch.tensor([p], dtype=torch.int32), **out)
            assert torch.allclose(out.pop("logits")[0, 0], ref[p], atol=1e-5), p


def test_settings_and_size_verdict():
    with pytest.raises(UserError, match="multiple of prefill_len"):
        litert_build.settings({"litert": {"prefill_len": 64, "capacity": 100}})
    with pytest.raises(UserError, match="unknown key"):
        litert_build.settings({"litert": {"thread": 4}})
    with pytest.raises(UserError, match=r"windows \[100, 512\] must be multiples of prefill_len 64 below"):
        litert_build.settings({"litert": {"windows": "128,100,512"}})
    with pytest.raises(UserError, match="comma-separated integers"):
        litert_build.settings({}, {"windows": "128;256"})
    assert litert_build.settings({}, {"windows": "256, 128"})["windows"] == [128, 256]
    assert litert_build.settings({}, {"windows": ""})["windows"] == []
    v = litert_build.size_verdict(26_100_000, TARGET)
    assert not v["meets_size"] and "android-15mb" in v["size_note"]
    assert litert_build.size_verdict(14_700_000, TARGET)["meets_size"]


@pytest.fixture(scope="module")
def toolchain():
    pytest.importorskip("ai_edge_litert")
    return toolchain_or_skip(litert_build.python, "LiteRT")


@pytest.fixture(scope="module")
def built(toolchain, data_dir, tmp_path_factory):
    """{precision: (artifact dir, manifest)} of a `tiny` preset model built through export.build.

    Random weights (seed 0): the conftest's 2-layer model is so small that graph overhead makes
    its INT8 file more than half its float weights, which export rejects as "not quantised"."""
    from litelm_edge.export import build
    root = tmp_path_factory.mktemp("litert")
    torch.manual_seed(0)
    m = Transformer(preset("tiny")).eval()
    tok = (data_dir / "tokenizer.json").read_text()
    cks = {"int8": checkpoint.save(root / "ck", m, tok, {"data_dir": str(data_dir)})}
    with torch.no_grad():  # with the default init a random model echoes its last token (greedy
        for n, w in m.named_parameters():  # repeats one); x6 block weights make it use the context,
            if n.startswith("layers.") and w.dim() == 2:  # for the fp32 golden tokens (int8 parity
                w.mul_(6)  # would then sit on near-ties: it keeps the plain init)
    cks["fp32"] = checkpoint.save(root / "ck6", m, tok, {"data_dir": str(data_dir)})
    # --set build.*: 2 prefill chunks for a 20-token prompt; attention windows 32 and 128 (capacity)
    sets = {"prefill_len": 16, "capacity": 128, "windows": "32"}
    return {p: (root / p, build(cks[p], "android", root / p, p, data_dir, sets, log=lambda m: None))
            for p in ("fp32", "int8")}


def runtime(art_dir):
    from litelm_edge.device_runner import open_runtime
    return open_runtime(art_dir, json.loads((Path(art_dir) / "manifest.json").read_text()), threads=1)


def greedy(rt, prompt, n):
    logits, out = rt.prefill(prompt)[-1], []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = rt.decode(out[-1])
    return out


def signatures_used(rt) -> list:
    """Record the signature of every call the runtime makes."""
    used, run = [], rt.engine.run
    rt.engine.run = lambda sig, *a: used.append(sig) or run(sig, *a)
    return used


def test_golden_greedy_tokens_equal_torch(built):
    """24 greedy tokens after a 20-token prompt (positions 20..43) cross from the 32-position
    attention window to the whole cache: LiteRT prints torch's tokens."""
    m = checkpoint.load(built["fp32"][1]["checkpoint"])[0]
    prompt = np.random.default_rng(1).integers(0, m.cfg.vocab_size, 20)  # 2 prefill chunks of 16
    want = m.generate(torch.from_numpy(prompt)[None], 24)[0, 20:].tolist()
    assert len(set(want)) >= 8, want  # a varied continuation, not one token repeated
    rt = runtime(built["fp32"][0])
    used = signatures_used(rt)
    assert greedy(rt, prompt, 24) == want
    assert {"prefill_32", "decode_32", "decode_128"} <= set(used), used


@pytest.mark.parametrize("in_place", [True, False], ids=["cache-in-litert", "cache-through-numpy"])
def test_decode_logits_equal_prefill_logits(built, in_place):
    """The cache a call leaves is the one the next call reads: decoding tokens 10..43 one by one
    gives the logits that one prefill of all 44 tokens gives at those positions (3 chunks, two
    windows), whether the cache stays inside LiteRT (CompiledModel) or travels through numpy."""
    from litelm_edge.backends.litert.runtime import LiteRTRuntime, compiled_model_available
    if in_place and not compiled_model_available():
        pytest.skip("ai_edge_litert has no CompiledModel here (< 2.0): caches go through numpy")
    art = built["fp32"][0]
    rt = LiteRTRuntime(art, json.loads((art / "manifest.json").read_text()), 1, in_place=in_place)
    assert rt.cache_in_place == in_place
    ids = np.random.default_rng(2).integers(0, 512, 44)
    full = rt.prefill(ids)
    rt.prefill(ids[:10])
    steps = np.stack([rt.decode(int(t)) for t in ids[10:44]])
    assert np.abs(steps - full[10:]).max() < 1e-4  # row i: the logits at position 10 + i
    assert rt.pos == 44


def test_int8_is_int8_and_passes_parity(built):
    from litelm_edge.backends.litert.inspect import weight_dtypes
    d, man = built["int8"]
    assert weight_dtypes(d / "model.tflite") == {"int8"} and man["weight_dtypes"] == ["int8"]
    assert man["parity"]["ok"] and man["parity"]["top1_agreement"] >= 0.95
    with pytest.raises(UserError, match="float32 weights"):  # a float file labelled int8 fails
        litert_build.check_precision("int8", {"breakdown": built["fp32"][1]["size_breakdown"]})


def test_size_breakdown_sums_to_file_size(built):
    for d, man in built.values():
        b = man["size_breakdown"]
        parts = sum(b[k] for k in ("embeddings", "attention", "mlp", "head", "other"))
        assert parts == b["total"] == os.path.getsize(Path(d) / "model.tflite")
    c = types.SimpleNamespace(**built["fp32"][1]["model"])
    hd = c.n_embd // c.n_head
    b = built["fp32"][1]["size_breakdown"]  # fp32: 4 bytes a weight, each stored once
    assert b["embeddings"] == 4 * c.vocab_size * c.n_embd  # tied with the head
    assert b["attention"] == 4 * c.n_layer * 2 * c.n_embd * (c.n_head + c.n_kv_head) * hd
    assert b["mlp"] == 4 * c.n_layer * 3 * c.n_embd * c.intermediate_size


def _emulator():
    import importlib.util
    path = Path(__file__).resolve().parent.parent / "tools" / "emulated_device.py"
    spec = importlib.util.spec_from_file_location("emulated_device", path)
    mod = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_emulated_arm64_device_bench_remote_with_parity(built, tmp_path, monkeypatch):
    """`litelm-edge bench --remote` of the android INT8 artifact on an arm64 Debian (qemu-user),
    through ~/.ssh/config like a phone's Termux sshd: the device runner's on-device parity holds."""
    import subprocess
    emu = _emulator()
    ok, why = emu.enable_binfmt()
    if not ok:
        pytest.skip(why)
    try:
        rootfs = emu.build_rootfs(packages=emu.DEFAULT_PACKAGES)
    except emu.DeviceError as e:
        pytest.skip(f"no arm64 rootfs: {e}")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    art = built["int8"][0]
    quick = ["--reps", "1", "--warmup", "0", "--prompt-len", "16", "--gen-len", "4", "--concurrency", "1"]
    with emu.start_device(rootfs) as dev:
        (home / ".ssh" / "known_hosts").write_text(dev.host_key_line + "\n")
        (home / ".ssh" / "config").write_text(f"Host phone\n  HostName {dev.host}\n  Port {dev.port}\n"
                                              f"  User {dev.user}\n  IdentityFile {dev.key_path}\n")
        p = subprocess.run([sys.executable, "-m", "litelm_edge.cli", "bench", "--remote", "phone", str(art),
                            "--report-dir", str(tmp_path / "rep"), *quick],
                           capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(next((tmp_path / "rep").rglob("bench.json")).read_text())
    text = json.dumps(res)
    assert "aarch64" in text and res["parity"]["ok"], res["parity"]  # on-device parity vs torch
