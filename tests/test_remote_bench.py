"""bench over SSH, end to end: a real x86 artifact, a real sshd, the real device runner."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy
import onnxruntime
import psutil
import pytest

from litelm_edge import manifest
from litelm_edge.devices.facts import EnergyMeter
from litelm_edge.devices.remote import RemoteError
from litelm_edge.devices.remote_bench import bench_remote
from sshd import trust

PROTO = {"reps": 1, "warmup": 1, "prompt_len": 16, "gen_len": 8, "concurrency": 2}


@pytest.fixture
def x86_art(x86_fp32):
    return x86_fp32  # conftest's session artifact: read-only


def _venv(path: Path, site: Path) -> str:
    """A venv without pip whose only extra packages are those in `site` (a .pth file)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    lib = next((path / "lib").glob("python3*")) / "site-packages"
    (lib / "extra.pth").write_text(f"{site}\n")
    return str(path / "bin" / "python")


@pytest.fixture
def numpy_only_python(tmp_path) -> str:
    """A device python that has numpy but no onnxruntime."""
    site = tmp_path / "numpy-site"
    site.mkdir()
    src = Path(numpy.__file__).parent.parent
    for name in ("numpy", "numpy.libs"):
        if (src / name).exists():
            (site / name).symlink_to(src / name)
    return _venv(tmp_path / "np-only", site)


def test_remote_bench_end_to_end(sshd, ssh_home, x86_art):
    trust(ssh_home, sshd)
    lines = []
    r = bench_remote(sshd.address, x86_art, PROTO, python=sys.executable, log=lines.append)
    assert r["parity"]["ok"] and r["parity"]["top1_agreement_vs_torch"] == 1.0
    assert r["provenance"] == f"measured on {sshd.address} over SSH (remote bench)"
    assert r["protocol"]["reps"] == 1 and r["prefill_ms"]["n"] == 10
    assert r["device"]["cores"] >= 1 and r["device"]["cpu"] and "temperatures_c" in r["device"]
    sensor = EnergyMeter().source  # the device is this machine: same sensors, or none
    assert r["energy"]["how"].startswith(f"measured ({sensor})" if sensor else "estimated")
    assert any("[runner] parity: top-1 1.000" in m for m in lines)
    files = {p.name for p in x86_art.iterdir()}
    assert set(r["remote"]["push"]["files_sent"]) == files
    again = bench_remote(sshd.address, x86_art, PROTO, python=sys.executable, log=lambda m: None)
    assert again["remote"]["push"]["bytes_sent"] == 0
    assert set(again["remote"]["push"]["files_skipped"]) == files
    results = Path(r["remote"]["remote_dir"]).parent.parent / "runner"
    assert not list(results.glob("result-*"))  # fetched and removed on the device


def test_runtime_missing_on_device(sshd, ssh_home, x86_art, numpy_only_python):
    trust(ssh_home, sshd)
    with pytest.raises(RemoteError, match=r"onnxruntime is not installed: python3 -m pip install "
                       r"onnxruntime numpy \(on the device\), or rerun with --install-runtime"):
        bench_remote(sshd.address, x86_art, PROTO, python=numpy_only_python, log=lambda m: None)


def test_device_venv_is_used_when_present(sshd, ssh_home, x86_art, numpy_only_python):
    trust(ssh_home, sshd)
    venv = sshd.dir / "device-cache/litelm-edge/venv"
    _venv(venv, Path(onnxruntime.__file__).parent.parent)
    lines = []
    r = bench_remote(sshd.address, x86_art, PROTO, python=numpy_only_python, log=lines.append)
    assert r["parity"]["ok"] and any(f"running in {venv}" in m for m in lines)


@pytest.mark.slow
def test_install_runtime_into_device_venv(sshd, ssh_home, x86_art, numpy_only_python):
    """--install-runtime: pip installs onnxruntime from the package index into the device venv
    (CI reaches PyPI; no test probes the network at collection time)."""
    trust(ssh_home, sshd)
    try:
        r = bench_remote(sshd.address, x86_art, PROTO, python=numpy_only_python, install_runtime=True,
                         log=lambda m: None)
    except RemoteError as e:
        if "pip install" in str(e) and any(w in str(e) for w in ("connection", "Connection", "resolve",
                                                                 "No matching")):
            pytest.skip(f"pip cannot reach a package index here: {e}")
        raise
    assert r["parity"]["ok"]
    venv_py = sshd.dir / "device-cache/litelm-edge/venv/bin/python"
    assert subprocess.run([venv_py, "-c", "import onnxruntime"]).returncode == 0


def test_parity_mismatch_is_a_failed_bench(sshd, ssh_home, x86_art, tmp_path):
    trust(ssh_home, sshd)
    bad = tmp_path / "bad"
    shutil.copytree(x86_art, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["reference"]["artifact_last_logits"] = [v + 1.0 for v in m["reference"]["artifact_last_logits"]]
    manifest.write(bad, m)  # a wrong reference under a valid id: the runner's parity must catch it
    r = bench_remote(sshd.address, bad, PROTO, python=sys.executable, log=lambda m: None)
    assert r["parity"]["ok"] is False and r["ok"] is False
    assert r["parity"]["max_abs_err_vs_host"] == pytest.approx(1.0, abs=1e-3)


def _runners() -> list:
    return [p for p in psutil.process_iter(["cmdline", "status"]) if p.info["status"] != "zombie"
            and any(a.endswith("/devices/runner.py") for a in p.info["cmdline"] or [])]


def test_runner_timeout_leaves_nothing_behind(sshd, ssh_home, x86_art):
    trust(ssh_home, sshd)
    slow = dict(PROTO, reps=100000)
    with pytest.raises(RemoteError, match=r"exceeded its 3 s timeout and was killed"):
        bench_remote(sshd.address, x86_art, slow, python=sys.executable, timeout=3,
                     log=lambda m: None)
    deadline = time.monotonic() + 10
    while _runners() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _runners() == []
