"""The Raspberry Pi's alternatives to the TVM design target: targets/rpi4-ort.toml (ONNX Runtime)
and targets/rpi4-litert.toml (LiteRT), one TOML each and no code of their own. They load with
the Pi's arch, thresholds and power model, build here, and (slow) run on the emulated arm64
device with on-device parity: a function check, never a speed claim (qemu-user is ~700x slower)."""
from __future__ import annotations

import pytest

from test_tvm_emulated import pi_home  # noqa: F401 - the fixture: HOME with the device's ssh key

PROTOCOL = {"reps": 1, "warmup": 0, "prompt_len": 16, "gen_len": 4, "concurrency": 1}
# small: fast under qemu; room for the parity window
LITERT_SMALL = {"prefill_len": 16, "capacity": 128, "windows": "32"}
CASES = {"rpi4-ort": ("ort", "onnxruntime", {}), "rpi4-litert": ("litert", "litert", LITERT_SMALL)}
# their defaults: plain int8 costs SmolLM2-135M +4.1 % through LiteRT, int8-had +0.5 %; ORT's W8A8 int8
# +68 %, its weight-only int8-b32 +1.05 % (docs/quality.md)
DEFAULTS = {"rpi4-ort": "int8-b32", "rpi4-litert": "int8-had"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rpi4_alternatives_load_with_the_pis_thresholds(name):
    from litelm_edge.backends import load_target
    _, tgt = load_target(name)
    _, pi = load_target("rpi4")
    assert (tgt["target"]["backend"], tgt["target"]["arch"]) == (CASES[name][0], "aarch64")
    assert tgt["target"]["precision"] == DEFAULTS[name]
    assert tgt["thresholds"] == pi["thresholds"] and tgt["power"] == pi["power"]


@pytest.fixture(scope="module")
def alternatives(build_once, tiny_run, data_dir):
    pytest.importorskip("onnxruntime")
    return {name: build_once(tiny_run, name, "int8", data_dir, sets) for name, (_, _, sets) in CASES.items()}


def test_rpi4_alternatives_build_for_aarch64_with_parity(alternatives):
    import json
    for name, art in alternatives.items():
        m = json.loads((art / "manifest.json").read_text())
        assert (m["target"], m["arch"], m["precision"], m["runtime"]) == (name, "aarch64", "int8", CASES[name][1])
        assert m["parity"]["ok"] and m["parity"]["top1_agreement"] >= 0.95, (name, m["parity"])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_rpi4_alternative_runs_on_emulated_pi(name, pi_home, alternatives):  # noqa: F811
    from litelm_edge.devices.remote_bench import bench_remote
    dev = pi_home
    res = bench_remote(f"{dev.user}@{dev.host}:{dev.port}", alternatives[name], PROTOCOL, log=lambda m: None)
    print(f"emulated {name}: parity {res['parity']}")
    assert res["device"]["machine"] == "aarch64" and res["provenance"].startswith("emulated device")
    assert res["parity"]["ok"] and res["parity"]["top1_agreement_vs_torch"] >= 0.95, res["parity"]
