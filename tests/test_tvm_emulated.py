"""The rpi4 (aarch64) artifact on an emulated Pi: an arm64 Debian under qemu-user + binfmt with
python3, numpy and the aarch64 apache-tvm wheel, reached with `bench --remote` like a real Pi.
On-device parity is checked against the torch reference in the manifest. Timings from here are
marked emulated by the runner: a function check, never a speed claim."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("torch", reason="the rpi4 build imports the checkpoint with torch: bash tools/setup.sh "
                    "--dev installs torch==2.13.0")

PROTOCOL = {"reps": 1, "warmup": 0, "prompt_len": 16, "gen_len": 8, "concurrency": 1}


@pytest.fixture()
def pi_home(emulated_device, tmp_path, monkeypatch):
    """HOME whose ssh key and known_hosts are the emulated device's, as a user would set up."""
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    shutil.copy(emulated_device.key_path, ssh / "id_ed25519")
    (ssh / "id_ed25519").chmod(0o600)
    (ssh / "known_hosts").write_text(emulated_device.host_key_line + "\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return emulated_device


@pytest.mark.slow
def test_rpi4_fp32_and_int8_run_on_emulated_pi(pi_home, rpi4_fp32, rpi4_int8, tmp_path):
    """Both builds pass on-device parity; int8 is judged against the fp32 bench for energy."""
    import json
    from litelm_edge.devices.remote_bench import bench_remote
    dev, baseline = pi_home, None
    for precision, art in (("fp32", rpi4_fp32), ("int8", rpi4_int8)):
        res = bench_remote(f"{dev.user}@{dev.host}:{dev.port}", art, PROTOCOL, baseline=baseline,
                           log=lambda m: None)
        print(f"emulated rpi4 {precision}: parity {res['parity']}; energy {res['energy']}; "
              f"thresholds {res['thresholds']}")
        assert res["parity"]["ok"] and res["parity"]["top1_agreement_vs_torch"] >= 0.95, res["parity"]
        assert res["device"]["machine"] == "aarch64"
        assert res["provenance"].startswith("emulated device")  # never a speed claim
        baseline = tmp_path / "fp32-bench.json"
        baseline.write_text(json.dumps(res))
    energy_row = next(r for r in res["thresholds"] if r["threshold"] == "min_energy_reduction")
    assert energy_row["value"] is not None and energy_row["limit"] == 0.40


@pytest.mark.slow
def test_rpi4_int4_gptq_runs_its_neon_kernel_on_emulated_pi(pi_home, build_once, tiny_run, data_dir):
    """The rpi4 int4-gptq build decodes with dot.py's "neon" kernel (int8 activations, integer
    products); on the emulated Pi (function only) it passes the device parity check against this
    host's parity library, which runs the same integer arithmetic as portable code."""
    from litelm_edge.devices.remote_bench import bench_remote
    from litelm_edge.manifest import read_manifest
    art = build_once(tiny_run, "rpi4", "int4-gptq", data_dir,
                     sets={"tvm.gptq_windows": 8, "tvm.gptq_len": 64})
    assert read_manifest(art)["tvm"]["int4_kernel"] == read_manifest(art)["tvm"]["int8_kernel"] == "neon"
    dev = pi_home
    res = bench_remote(f"{dev.user}@{dev.host}:{dev.port}", art, PROTOCOL, log=lambda m: None)
    assert res["parity"]["ok"], res["parity"]
    assert res["device"]["machine"] == "aarch64" and res["provenance"].startswith("emulated device")


@pytest.mark.slow
def test_tune_on_emulated_pi_stores_the_database(pi_home, tvm_python, tiny_run, data_dir, tmp_path,
                                                 monkeypatch):
    """`build --tune --remote`'s loop against a device reached over SSH: every candidate built,
    pushed and timed there; the database beside the artifact says the timings were emulated."""
    import json
    from litelm_edge.flows import tune as tvm_tune
    dev = pi_home
    monkeypatch.setattr(tvm_tune, "PROTOCOL",
                        dict(tvm_tune.PROTOCOL, reps=1, warmup=0, prompt_len=16, gen_len=4))
    m = tvm_tune.tune(tiny_run, "rpi4", tmp_path / "art", f"{dev.user}@{dev.host}:{dev.port}", "int8",
                      data_dir, candidates=([4, 16], [2, 16]), log=lambda m: None)
    db = json.loads((tmp_path / "art.tuning.json").read_text())
    assert [c["tile"] for c in db["candidates"]] == [[4, 16], [2, 16]]
    assert all(c["provenance"].startswith("emulated device") and c["prefill_ms"] > 0 for c in db["candidates"])
    assert db["best"] == min(db["candidates"], key=lambda c: c["score"])["tile"]
    assert "emulated device" in db["note"]
    assert json.loads((tmp_path / "art" / "manifest.json").read_text()) == m
    assert m["tvm"]["tile"] == db["best"] and m["parity"]["top1_agreement"] >= 0.95
