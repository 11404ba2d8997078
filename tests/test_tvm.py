"""TVM backend through `build_flow.build`: golden greedy tokens on x86, an aarch64 ELF for the Pi,
int8 weights a quarter of fp32 with >= 95% top-1 on held-out text, the missing-compiler line, and
the rpi4 artifact run on an emulated Pi (qemu-user + binfmt) with on-device parity."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the TVM build imports the checkpoint with torch: "
                            "bash tools/setup.sh --dev installs torch==2.13.0")

from litelm_edge import toolchain  # noqa: E402
from litelm_edge.backends import INT4, INT8  # noqa: E402
from litelm_edge.backends.tvm import build as tvm_build  # noqa: E402
from litelm_edge.config import UserError  # noqa: E402
from litelm_edge.backends.tvm import Settings  # noqa: E402
from litelm_edge.pipeline import checkpoint  # noqa: E402

EM_AARCH64 = 183  # ELF e_machine of aarch64


@pytest.fixture(scope="module")
def builds(tvm_python, build_once, rpi4_fp32, rpi4_int8, tiny_run, data_dir):
    """The session's TVM builds (conftest): read-only."""
    # x86: targets/x86-tvm.toml's [tvm] target "host" and tile [4, 32], the tile overridden by --set
    x86 = build_once(tiny_run, "x86-tvm", "fp32", data_dir, {"tvm.tile": "2,16"})
    return {"x86": x86, "rpi4": rpi4_fp32, "rpi4-int8": rpi4_int8}


def manifest(d: Path) -> dict:
    return json.loads((d / "manifest.json").read_text())


def greedy(rt, prompt: np.ndarray, n: int) -> list[int]:
    logits, out = rt.prefill_last(prompt), []  # forward_last: serving's prefill
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = rt.decode(out[-1])
    return out


@pytest.mark.slow
def test_x86_greedy_tokens_equal_torch(builds, tiny_run, tvm_python, tmp_path):
    model = checkpoint.load(tiny_run)[0]
    prompt = torch.arange(1, 17)[None]
    want = model.generate(prompt, 24)[0, 16:].tolist()
    lib = tmp_path / "lib"
    shutil.copytree(builds["x86"], lib)
    rt = tvm_build.HostParity(tvm_python, lib, manifest(builds["x86"]))
    try:
        assert greedy(rt, prompt[0].numpy(), 24) == want
        every, last = rt.prefill(prompt[0].numpy()), rt.prefill_last(prompt[0].numpy())
        assert every.shape == (16, model.cfg.vocab_size) and last.shape == (model.cfg.vocab_size,)
        assert np.abs(every[-1] - last).max() < 1e-5 * np.abs(last).max()  # the head's GEMV, not its tile
    finally:
        rt.close()
    assert manifest(builds["x86"])["tvm"]["entry_last"] == "forward_last"
    assert manifest(builds["x86"])["parity"]["max_abs_err"] < 1e-4
    c = model.cfg  # the in-place cache graph, recorded for the runtime
    cache = manifest(builds["x86"])["tvm"]["cache"]
    assert cache == {"k": "(1,nkv,hd,C)", "v": "(1,nkv,C,hd)", "pos": "(1,) int64", "write": "in place",
                     "n_layer": c.n_layer}
    so = builds["x86"] / manifest(builds["x86"])["tvm"]["library"]
    args = [str(so), json.dumps(manifest(builds["x86"])), json.dumps(want)]
    r = subprocess.run([str(tvm_python), "-c", GROW, *args], capture_output=True, text=True,
                       env=toolchain.src_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "[8,16,32,64]"  # the capacities the caches went through, the tokens equal


# Run in the TVM venv: the runtime's caches start at 8 positions instead of 256, so a 16-token prompt
# and 24 decode steps grow them three times; the greedy tokens must still be torch's, and a prefill
# on the kept caches (stale positions past the prompt) the same as on fresh ones.
GROW = r"""
import json, sys
import numpy as np
from litelm_edge.backends.tvm import runtime
runtime.MIN_CAPACITY = 8
rt = runtime.TvmRuntime(sys.argv[1], json.loads(sys.argv[2]), 2)
rt._reset()
caps = [rt.kv[0].shape[3]]
logits, out = rt.prefill(np.arange(1, 17))[-1], []
for _ in range(24):
    caps.append(rt.kv[0].shape[3])
    out.append(int(np.argmax(logits)))
    logits = rt.decode(out[-1])
assert out == json.loads(sys.argv[3]), (out, sys.argv[3])
first = rt.prefill(np.arange(1, 17))  # the grown caches kept, their old positions stale: not read
rt.kv = []
assert np.array_equal(first, rt.prefill(np.arange(1, 17)))  # the same as on fresh caches
print(json.dumps(sorted(set(caps))).replace(" ", ""))
"""


@pytest.mark.slow
def test_settings_land_under_the_section(builds):
    """The target table's value (target = "host") and the --set one (tile 2,16) both reach
    manifest["tvm"], beside what the build derived from them (the LLVM target, the library)."""
    m = manifest(builds["x86"])["tvm"]
    assert (m["target"], m["tile"], m["cc"]) == ("host", [2, 16], None)
    # TVM prints a target as JSON
    assert "\"kind\":\"llvm\"" in m["llvm_target"] and m["library"] == "model.so"


@pytest.mark.slow
def test_rpi4_library_is_aarch64_elf(builds):
    head = (builds["rpi4"] / "model.so").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == EM_AARCH64


@pytest.mark.slow
def test_rpi4_int8_is_a_quarter_and_agrees(builds):
    """Weight bytes as the shipped aarch64 library embeds them (not the torch buffers it came from)."""
    m8, m32 = manifest(builds["rpi4-int8"]), manifest(builds["rpi4"])
    w8, w32 = m8["tvm"]["weight_bytes"], m32["tvm"]["weight_bytes"]
    assert w8 == m8["weight_bytes"] == tvm_build.embedded_weight_bytes(builds["rpi4-int8"] / "model.so")
    assert w32["float32"] == pytest.approx(4 * m32["n_params"], rel=0.02)  # every weight, the tied one once
    assert sum(v for k, v in w32.items() if k != "float32") < 1024  # a few int64 index constants
    assert w8["int8"] > 10 * w8["float32"]  # int8 matrices; float32 only scales and norms
    assert sum(w8.values()) / sum(w32.values()) < 0.27
    so8, so32 = ((builds[k] / "model.so").stat().st_size for k in ("rpi4-int8", "rpi4"))
    assert sum(w8.values()) < so8 < so32  # the file holds them; at 0.1M params code is most of it
    assert m8["parity"]["rule"] == str(INT8) and m8["parity"]["ok"]  # held-out
    assert m8["tvm"]["int8_kernel"] == "neon" and "int8_kernel" not in m32["tvm"]  # dot.gemm8_dot


@pytest.mark.slow
def test_x86_tvm_int4_gptq_is_nibbles_of_gptqs_codes_and_agrees(build_once, tiny_run, data_dir):
    """int4-gptq through the build flow on this CPU: packed nibbles in the library, the int8 head, a
    matrix the layout cannot hold int8 and listed (none: the tiny model's 32-wide k/v are held, fused
    into qkv); every snapped weight comes back unchanged from the layout's quantizer (GPTQ's codes,
    not round to nearest's), the calibration recorded, parity on held-out text."""
    m = manifest(build_once(tiny_run, "x86-tvm", "int4-gptq", data_dir,
                            sets={"tvm.gptq_windows": 8, "tvm.gptq_len": 64}))
    w, c, g = m["tvm"]["weight_bytes"], checkpoint.load(tiny_run)[0].cfg, m["tvm"]["gptq"]
    kv = c.n_kv_head * c.head_dim
    assert kv % 64 and (c.n_embd + 2 * kv) % 64 == 0  # k, v alone too narrow for the layout; qkv is not
    assert m["tvm"]["int4_as_int8"] == []
    flags = Path("/proc/cpuinfo").read_text()  # dot.py's integer kernels, else gemm4's fp32 widening
    kind = "vnni" if " avx512_vnni" in flags else "avx2" if " avx2" in flags else None
    assert m["tvm"]["int4_kernel"] == (kind or "gemm4")
    assert m["tvm"]["int8_kernel"] == (kind or "gemm")  # the int8 head: dot.gemm8_dot
    # qkv, o, gate_up, down
    layers = c.n_layer * (2 * c.n_embd * c.n_embd + 2 * c.n_embd * kv + 3 * c.n_embd * c.intermediate_size)
    assert w["uint8"] == layers // 2  # two weights a byte
    assert w["int8"] == c.vocab_size * c.n_embd  # the tied head / embedding
    assert g["snapped"] == {"weights": 7 * c.n_layer, "lossless": 7 * c.n_layer}
    assert (g["windows"], g["window_len"], g["data"]) == (8, 64, str(data_dir / "train.bin"))
    assert g["output_error_vs_rtn"]["max"] < 1  # every layer below round to nearest's output error
    assert m["parity"]["rule"] == str(INT4) and m["parity"]["ok"], m["parity"]


def test_embedded_weight_bytes_reads_tvm_tensor_headers(tmp_path):
    """The constant-pool reader on a hand-made blob: two tensors among other bytes."""
    import struct

    def tensor(code, bits, shape):
        n = int(np.prod(shape)) * bits // 8
        return (struct.pack("<QQiiI", tvm_build.TENSOR_MAGIC, 0, 1, 0, len(shape)) + struct.pack("<BBH", code, bits, 1)
                + struct.pack(f"<{len(shape)}q", *shape) + struct.pack("<q", n) + bytes(n))
    blob = b"\x7fELF" + bytes(100) + tensor(0, 8, (64, 32)) + b"code" + tensor(2, 32, (32,)) + tensor(0, 8, (3,))
    (tmp_path / "m.so").write_bytes(blob + struct.pack("<Q", tvm_build.TENSOR_MAGIC) + bytes(30))  # cut short
    assert tvm_build.embedded_weight_bytes(tmp_path / "m.so") == {"int8": 64 * 32 + 3, "float32": 4 * 32}


def test_a_toolchain_module_that_crashes_is_one_clear_line(tmp_path, monkeypatch):
    """A converter killed by a signal leaves no Python error, only warnings: the line names the signal."""
    import sys
    (tmp_path / "crash.py").write_text("import os, signal, sys\nprint('x: Warning: noise', file=sys.stderr)\n"
                                       "sys.stderr.flush()\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    logged = []
    with pytest.raises(UserError, match=r"^crash was killed by SIGSEGV \(no Python error\): run it again"):
        toolchain.run(Path(sys.executable), "crash", [], log=logged.append)
    assert "Warning: noise" in logged[0]


def test_missing_cross_compiler_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None if "aarch64" in name else "/usr/bin/" + name)
    with pytest.raises(UserError, match=r"^aarch64-linux-gnu-g\+\+ not found: apt-get install "
                                        r"g\+\+-aarch64-linux-gnu"):
        tvm_build.check_cc(Settings("raspberry-pi/4b-aarch64", "aarch64-linux-gnu-g++"))


def test_tune_picks_the_fastest_tile_and_stores_the_database(monkeypatch, tmp_path):
    """The tuner's loop with the device and builds faked: the data it keeps beside the artifact."""
    from litelm_edge.flows import tune as tvm_tune
    from litelm_edge.devices import remote_bench
    from litelm_edge.flows import build as build_flow
    built = []
    monkeypatch.setattr(build_flow, "build",
                        lambda ck, tgt, out, prec, data, sets, log: built.append(sets["tvm.tile"]) or {"tvm": {"tile": sets["tvm.tile"]}})
    fake_ms = {(4, 16): 30.0, (8, 8): 20.0, (1, 32): 25.0}
    monkeypatch.setattr(remote_bench, "bench_remote", lambda addr, art, proto, log: {
        "prefill_ms": {"mean": fake_ms[tuple(built[-1])]}, "decode_ms_per_token": {"mean": 1.0},
        "provenance": "fake"})
    m = tvm_tune.tune("ckpt", "rpi4", tmp_path / "art", "pi@host", candidates=([4, 16], [8, 8], [1, 32]),
                      log=lambda msg: None)
    db = json.loads((tmp_path / "art.tuning.json").read_text())
    assert db["best"] == [8, 8] and m["tvm"]["tile"] == [8, 8] and len(db["candidates"]) == 3


def test_tile_override_is_checked():
    from litelm_edge import backends
    tvm, table = backends.load("tvm"), {"target": "llvm", "tile": [4, 16]}
    assert backends.resolve(tvm, table, {"tvm.tile": "8,32"}).tile == [8, 32]  # --set over the target's [tvm]
    assert backends.resolve(tvm, table, {"cc": "g++"}).tile == [4, 16]
    with pytest.raises(UserError, match="two positive ints"):
        backends.resolve(tvm, table, {"tvm.tile": "8"})
    assert backends.resolve(tvm, table, {"tvm.gemv": "128"}).gemv == 128
    with pytest.raises(UserError, match="gemv must be a multiple of 16"):
        backends.resolve(tvm, table, {"tvm.gemv": "256"})  # 1024 bytes of accumulators: on the heap
    with pytest.raises(UserError, match="did you mean 'tile'"):
        backends.resolve(tvm, table, {"tvm.tiles": "8,32"})
    with pytest.raises(UserError, match=r"\[tvm\] target"):
        backends.resolve(tvm, {}, {})
