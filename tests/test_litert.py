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
from litelm_edge import backends  # noqa: E402
from litelm_edge.backends.litert import Settings  # noqa: E402
from litelm_edge.backends import INT4, INT8  # noqa: E402
from litelm_edge.backends.litert import build as litert_build  # noqa: E402
from litelm_edge.backends.litert.graph import CachedLM  # noqa: E402
from litelm_edge.config import UserError  # noqa: E402
from litelm_edge.pipeline import checkpoint  # noqa: E402
from litelm_edge.pipeline.model import Transformer, preset  # noqa: E402

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


def test_default_mask_holds_when_attention_scores_are_large():
    """A trained model's attention scores can exceed 30: the default mask keeps the prefill exact
    there, where the finite -30 that full-integer INT8 needs lets later tokens leak in."""
    torch.manual_seed(2)
    m = Transformer(preset("tiny")).eval()
    with torch.no_grad():
        for blk in m.layers:  # scores ~ |q||k|: scale both up, as training does to sharp heads
            blk.self_attn.q_proj.weight.mul_(12)
            blk.self_attn.k_proj.weight.mul_(12)
    idx = torch.randint(0, m.cfg.vocab_size, (1, 16))
    pos = torch.arange(16, dtype=torch.int32)
    with torch.no_grad():
        ref = m(idx)[0]
        err = {}
        for mask in (Settings().mask_value, litert_build.FULL_INT_MASK):
            g = CachedLM(m, capacity=32, mask_value=mask)
            err[mask] = (g(idx.int(), pos, **g.empty_cache())["logits"] - ref).abs().max().item()
    assert err[Settings().mask_value] < 1e-4, err
    assert err[litert_build.FULL_INT_MASK] > 1e-2, err  # the case the default exists for


def settings(table: dict, sets: dict | None = None, precision: str = "fp32") -> dict:
    """The LiteRT settings as the build flow resolves them, then as the build makes them effective."""
    s = backends.resolve(backends.load("litert"), table, sets)
    return litert_build.effective(s, precision)


def test_settings_and_size_verdict():
    with pytest.raises(UserError, match="multiple of prefill_len"):
        settings({"prefill_len": 64, "capacity": 100})
    with pytest.raises(UserError, match="unknown key"):
        settings({"thread": 4})
    with pytest.raises(UserError, match=r"windows \[100, 512\] must be multiples of prefill_len 64 below"):
        settings({"windows": "128,100,512"})
    with pytest.raises(UserError, match="comma-separated integers"):
        settings({}, {"windows": "128;256"})
    assert settings({}, {"windows": "256, 128"})["windows"] == [128, 256]
    assert settings({}, {"windows": ""})["windows"] == []
    assert settings({}, {"prefill_windows": ""})["prefill_windows"] == []
    with pytest.raises(UserError, match=r"prefill_windows \[96\] must be multiples of prefill_len 64"):
        settings({"prefill_windows": "96"})
    assert settings({}, {}, "int8-full")["mask_value"] == litert_build.FULL_INT_MASK


def test_signatures_per_window_and_kind():
    """A prefill signature per prefill window and a decode one per window, each plus the capacity."""
    from litelm_edge.backends.litert.convert import signatures
    assert signatures(16, 128, [32], []) == [("prefill_128", 128, 16), ("decode_32", 32, 1),
                                             ("decode_128", 128, 1)]
    assert [n for n, _, _ in signatures(64, 512, [128], [256, 128])] == [
        "prefill_128", "prefill_256", "prefill_512", "decode_128", "decode_512"]
    v = litert_build.size_verdict(26_100_000, TARGET)
    assert not v["meets_size"] and "android-15mb" in v["size_note"]
    assert litert_build.size_verdict(14_700_000, TARGET)["meets_size"]


@pytest.fixture(scope="module")
def toolchain():
    pytest.importorskip("ai_edge_litert")
    return toolchain_or_skip(litert_build.python, "LiteRT")


@pytest.fixture(scope="module")
def built(toolchain, data_dir, tmp_path_factory):
    """{name: (artifact dir, manifest)} of `tiny` preset models built through flows/build.build.

    fp32, int8: random weights (seed 0): the conftest's 2-layer model is so small that graph
    overhead makes its INT8 file more than half its float weights, which export rejects as "not
    quantised". golden (fp32): the same with untied embeddings, whose greedy continuation is not one
    token repeated (a tied random model's is: each token's own embedding wins), so a KV-cache bug
    cannot hide behind it; the conftest's trained model repeats "\n\n" too."""
    import dataclasses
    from litelm_edge.flows.build import build
    root = tmp_path_factory.mktemp("litert")
    tok = (data_dir / "tokenizer.json").read_text()
    # --set build.*: 2 prefill chunks for a 20-token prompt; attention windows 32 and 128 (capacity)
    # for prefill and decode (targets/android.toml prefills over the capacity only: int4ch below)
    sets = {"prefill_len": 16, "capacity": 128, "windows": "32", "prefill_windows": "32"}
    out = {}
    for name, p, cfg, extra in [("fp32", "fp32", preset("tiny"), {}), ("int8", "int8", preset("tiny"), {}),
                                ("golden", "fp32", dataclasses.replace(preset("tiny"), tie_embeddings=False),
                                 {}),
                                ("int4ch", "int4-ch", preset("tiny"),
                                 {"prefill_windows": "", "gptq_windows": 8, "gptq_len": 64}),
                                ("int8had", "int8-had", preset("tiny"), {})]:
        torch.manual_seed(0)
        ck = checkpoint.save(root / f"ck-{name}", Transformer(cfg).eval(), tok, {"data_dir": str(data_dir)})
        out[name] = (root / name,
                     build(ck, "android", root / name, p, data_dir, sets | extra, log=lambda m: None))
    return out


def runtime(art_dir):
    from litelm_edge.devices.runner import open_runtime
    return open_runtime(art_dir, json.loads((Path(art_dir) / "manifest.json").read_text()), threads=1)


def greedy(rt, prompt, n):
    logits, out = rt.prefill_last(prompt), []
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
    m = checkpoint.load(built["golden"][1]["checkpoint"])[0]
    prompt = np.random.default_rng(1).integers(0, m.cfg.vocab_size, 20)  # 2 prefill chunks of 16
    want = m.generate(torch.from_numpy(prompt)[None], 24)[0, 20:].tolist()
    assert len(set(want)) >= 12, f"torch's continuation {want} is too uniform to catch a cache bug"
    rt = runtime(built["golden"][0])
    used = signatures_used(rt)  # positions 20..43 cross from the 32-position window to the cache's 128
    assert greedy(rt, prompt, 24) == want
    assert {"prefill_32", "decode_32", "decode_128"} <= set(used), used
    # the prefill signatures run the head on the prompt's last position only; every position's
    # logits (parity, perplexity) come through decode calls, and agree with torch and with it
    assert rt.last_only and rt.details["prefill_32"][1]["logits"]["shape"].tolist() == [1, 1, m.cfg.vocab_size]
    every = rt.prefill(prompt)
    want_all = m(torch.from_numpy(prompt)[None])[0][0].detach().numpy()
    assert np.abs(every - want_all).max() < 1e-3 and np.abs(every[-1] - rt.prefill_last(prompt)).max() < 1e-4


def test_a_second_prompt_does_not_see_the_first(built):
    """Cache slots are zeroed once: a -1e4 mask gives what an earlier, longer prompt left behind
    exactly zero weight, so a short prompt after a long one answers as in a fresh runtime; a
    small mask (int8-full's -30) zeroes the cache at every prefill instead."""
    from litelm_edge.backends.litert.runtime import LiteRTRuntime
    d, man = built["golden"]
    rng = np.random.default_rng(3)
    long, short = rng.integers(0, 256, 40), rng.integers(0, 256, 9)
    fresh = runtime(d)
    want = fresh.prefill(short), [fresh.decode(t) for t in (5, 6, 7)]
    rt = runtime(d)
    assert not rt.rezero and rt.prefill(long).shape == (40, man["model"]["vocab_size"])
    got = rt.prefill(short), [rt.decode(t) for t in (5, 6, 7)]
    assert np.abs(got[0] - want[0]).max() == 0 and all(np.abs(g - w).max() == 0 for g, w in zip(got[1], want[1], strict=True))
    rt.prefill_last(long)  # through the prefill signature: padded chunks leave their slots too
    assert np.abs(rt.prefill_last(short) - fresh.prefill_last(short)).max() == 0
    assert LiteRTRuntime(d / "model.tflite", {**man, "litert": dict(man["litert"], mask_value=-30.0)}, 1).rezero


def test_int8_is_int8_and_passes_parity(built):
    from litelm_edge.backends.litert.inspect import weight_dtypes
    d, man = built["int8"]
    assert weight_dtypes(d / "model.tflite") == {"int8"} and man["weight_dtypes"] == ["int8"]
    assert man["parity"]["rule"] == str(INT8) and man["parity"]["ok"]
    with pytest.raises(UserError, match="float32 weights"):  # a float file labelled int8 fails
        litert_build.check_precision("int8", {"breakdown": built["fp32"][1]["size_breakdown"]})


def test_int8_had_stores_rotated_weights_and_the_rotation(built):
    """int8-had: the manifest names the recipe the quantizer ran (the Hadamard rotation, capped at
    64); the int8 weights it stores are W @ H (H: 64 x 64 normalised Hadamard blocks along the
    input axis), not W; the graph holds H to rotate the inputs the same way; parity holds (INT8)."""
    from litelm_edge.backends.litert.inspect import read_model
    d, man = built["int8had"]
    ran = [(r["algorithm"], r["num_bits"], r["granularity"], r.get("max_hadamard_size")) for r in man["recipe"]]
    assert ran == [("DECOMPOSED_HADAMARD_ROTATION", 8, "CHANNELWISE", 64)]
    assert [r["algorithm"] for r in built["int8"][1]["recipe"]] == ["min_max_uniform_quantize"]
    assert man["parity"]["rule"] == str(INT8) and man["parity"]["ok"]
    model, _ = read_model(d / "model.tflite")
    ints, rotations = [], []
    for t in {id(t): t for sg in model.subgraphs for t in sg.tensors}.values():
        data = model.buffers[t.buffer].data if t.buffer else None
        if data is None or len(t.shape) != 2 or not len(data):
            continue
        if t.type == 9:  # int8, one scale per output channel
            q = np.frombuffer(bytes(data), np.int8).reshape(t.shape).astype(np.float32)
            ints.append(q * np.asarray(t.quantization.scale, np.float32)[:, None])
        elif t.type == 0 and t.shape[0] == t.shape[1]:
            rotations.append(np.frombuffer(bytes(data), np.float32).reshape(t.shape))
    H = rotations[0]
    assert all(h.shape == (64, 64) and np.array_equal(h, H) for h in rotations)
    assert np.allclose(np.abs(H), 64 ** -0.5) and np.allclose(H @ H.T, np.eye(64), atol=1e-6)
    W = checkpoint.load(man["checkpoint"])[0].layers[0].self_attn.q_proj.weight.detach().numpy()  # (out, in)
    rotated = (W.reshape(-1, 64) @ H).reshape(W.shape)

    def nearest(ref):  # relative error of the stored weight closest to ref
        return min(np.linalg.norm(w - ref) / np.linalg.norm(ref) for w in ints if w.shape == ref.shape)
    assert nearest(rotated) < 0.02 and nearest(W) > 0.5
    # the rotation is not a float weight left behind: the weight checks leave it out, however small
    # the model (on the CI's tiny model it was over 5 % of the weights, and the build refused it)
    from litelm_edge.backends.litert.inspect import weight_dtypes
    by = man["size_breakdown"]["weights_by_dtype"]
    assert weight_dtypes(d / "model.tflite") == {"int8"} and "float32" not in by
    assert by["float32 rotation"] == 64 * 64 * 4  # one matrix, stored once
    litert_build.check_precision("int8-had", {"breakdown": {"weights_by_dtype": dict(by, int8=by["float32 rotation"])}})


def test_int4_channelwise_with_prefill_over_the_whole_cache(built):
    """int4-ch: the layers' INT4 weights with one scale per output channel, in each tensor's own
    quantization parameters; the tied embedding / head in blocks of 32 with fp16 scales (one buffer);
    prefill_windows "" leaves one prefill signature (the capacity's) beside both decode ones, and
    the runtime uses them."""
    from litelm_edge.backends.litert.inspect import read_model, weight_dtypes
    d, man = built["int4ch"]
    assert weight_dtypes(d / "model.tflite") == {"int4", "float16"} and man["precision"] == "int4-ch"
    assert (man["litert"]["windows"], man["litert"]["prefill_windows"]) == ([32], [])
    assert man["parity"]["rule"] == str(INT4) and man["parity"]["ok"]
    n = 7 * man["model"]["n_layer"] + 1  # GPTQ's codes (snap.py): every projection and the tied head
    assert man["gptq"]["snapped"] == {"weights": n, "lossless": n}
    assert (man["gptq"]["block"], man["gptq"]["head"]) == ("channel", "blocks of 32")
    model, _ = read_model(d / "model.tflite")
    per_channel = [t for sg in model.subgraphs for t in sg.tensors
                   if t.quantization is not None and t.quantization.scale is not None and len(t.quantization.scale) > 1]
    assert len(per_channel) == 3 * 7 * man["model"]["n_layer"]  # 3 signatures x 7 projections a layer
    assert man["size_breakdown"]["weights_by_dtype"]["float16"] == 2 * man["model"]["vocab_size"] * man["model"]["n_embd"] // 32
    rt = runtime(d)
    assert sorted(rt.details) == ["decode_128", "decode_32", "prefill_128"]
    used = signatures_used(rt)
    greedy(rt, np.arange(5, 25), 4)
    assert used == ["prefill_128", "prefill_128", "decode_32", "decode_32", "decode_32", "decode_32"]


def test_x86_litert_target_builds_and_benches_here(built, data_dir, tmp_path):
    """targets/x86-litert.toml: the same backend for this x86 CPU, judged on x86's thresholds (QPS
    included); one TOML, no code of its own."""
    from litelm_edge.devices.bench import bench
    from litelm_edge.flows.build import build
    ck = built["int8"][1]["checkpoint"]
    sets = {"prefill_len": 16, "capacity": 128, "windows": "32"}
    m = build(ck, "x86-litert", tmp_path / "a", None, data_dir, sets, log=lambda s: None)
    assert (m["target"], m["arch"], m["precision"], m["runtime"]) == ("x86-litert", "x86_64", "int8-had",
                                                                      "litert")
    assert m["litert"]["threads"] == 2 and m["parity"]["ok"]
    r = bench(tmp_path / "a",
              dict(reps=1, warmup=1, iters=2, prompt_len=16, gen_len=4, concurrency=2, qps_iters=1),
              log=lambda s: None)
    assert {t["threshold"] for t in r["thresholds"]} == {"max_latency_ms", "min_inferences_per_s", "min_qps"}
    assert r["parity"]["ok"] and r["qps"]["sessions"] == 2 and r["provenance"] == "measured on this host (local bench)"


def test_settings_land_under_the_section(built):
    """targets/android.toml's [litert] threads and mask_value and the fixture's --set prefill_len,
    capacity and windows: both reach the artifact's manifest["litert"], and the runtime reads it."""
    from litelm_edge.backends.litert.runtime import default_threads
    m = built["fp32"][1]["litert"]
    assert (m["threads"], m["mask_value"]) == (4, -1e4)  # the target's table
    # --set
    assert (m["prefill_len"], m["capacity"], m["windows"], m["prefill_windows"]) == (16, 128, [32], [32])
    assert default_threads(built["fp32"][1]) == 4 and "threads" not in built["fp32"][1]


def test_size_breakdown_sums_to_file_size(built):
    for d, man in (built["fp32"], built["int8"]):
        b = man["size_breakdown"]
        parts = sum(b[k] for k in ("embeddings", "attention", "mlp", "head", "other"))
        assert parts == b["total"] == os.path.getsize(Path(d) / "model.tflite")
    c = types.SimpleNamespace(**built["fp32"][1]["model"])
    hd = c.n_embd // c.n_head
    b = built["fp32"][1]["size_breakdown"]  # fp32: 4 bytes a weight, each stored once
    assert b["embeddings"] == 4 * c.vocab_size * c.n_embd  # tied with the head
    assert b["attention"] == 4 * c.n_layer * 2 * c.n_embd * (c.n_head + c.n_kv_head) * hd
    assert b["mlp"] == 4 * c.n_layer * 3 * c.n_embd * c.intermediate_size


@pytest.mark.slow
def test_emulated_arm64_device_bench_remote_with_parity(built, emulated_device, tmp_path, monkeypatch):
    """`litelm-edge bench --remote` of the android INT8 artifact on an arm64 Debian (qemu-user),
    through ~/.ssh/config like a phone's Termux sshd: the device runner's on-device parity holds."""
    import subprocess
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    art = built["int8"][0]
    quick = ["--reps", "1", "--warmup", "0", "--prompt-len", "16", "--gen-len", "4", "--concurrency", "1"]
    dev = emulated_device
    (home / ".ssh" / "known_hosts").write_text(dev.host_key_line + "\n")
    (home / ".ssh" / "config").write_text(f"Host phone\n  HostName {dev.host}\n  Port {dev.port}\n"
                                          f"  User {dev.user}\n  IdentityFile {dev.key_path}\n")
    p = subprocess.run([sys.executable, "-m", "litelm_edge.cli", "bench", "--remote", "phone", str(art),
                        "--report-dir", str(tmp_path / "rep"), *quick],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(next((tmp_path / "rep").rglob("bench.json")).read_text())
    assert res["device"]["machine"] == "aarch64" and res["provenance"].startswith("emulated device")
    # on the device
    assert res["parity"]["ok"] and res["parity"]["top1_agreement_vs_torch"] >= 0.95, res["parity"]
