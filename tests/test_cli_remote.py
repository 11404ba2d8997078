"""The push and bench --remote verbs as a user runs them: exit codes, one-line errors, reports."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest

from sshd import trust

FAST = ["--reps", "1", "--warmup", "1", "--prompt-len", "16", "--gen-len", "8", "--concurrency", "2",
        "--remote-python", sys.executable]


@pytest.fixture
def x86_art(x86_fp32):
    return x86_fp32  # conftest's session artifact: read-only


def cli(*args):
    return subprocess.run([sys.executable, "-m", "litelm_edge.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def one_error_line(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    return lines[0]


def test_push_verb_and_host_key_flow(sshd, ssh_home, x86_art):
    p = cli("push", "--remote", sshd.address, x86_art)
    assert p.returncode == 3 and "unknown host key" in one_error_line(p)
    p = cli("push", "--remote", sshd.address, "--accept-new-host-key", x86_art)
    assert p.returncode == 0, p.stderr
    n = len(list(x86_art.iterdir()))  # the manifest and every file it lists
    assert f"{sshd.address}: {n} files sent" in p.stdout
    p = cli("push", "--remote", sshd.address, x86_art)
    assert p.returncode == 0 and f"0 files sent (0.00 MB), {n} already there" in p.stdout


def test_push_faults_are_one_line(sshd, ssh_home, x86_art, tmp_path):
    p = cli("push", "--remote", sshd.address, tmp_path)
    assert p.returncode == 2 and "no manifest.json" in one_error_line(p)
    trust(ssh_home, sshd)
    (ssh_home / ".ssh/id_ed25519").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", ssh_home / ".ssh/id_ed25519"],
                   check=True, input="y\n", text=True)
    p = cli("push", "--remote", sshd.address, x86_art)
    assert p.returncode == 3 and "authentication failed" in one_error_line(p)
    sshd.kill()
    p = cli("push", "--remote", sshd.address, x86_art)
    assert p.returncode == 3 and "connection refused" in one_error_line(p)


def test_bench_remote_verb(sshd, ssh_home, x86_art, tmp_path):
    trust(ssh_home, sshd)
    p = cli("bench", "--remote", sshd.address, x86_art, "--report-dir", tmp_path, *FAST)
    assert p.returncode == 0, p.stderr
    assert f"Transport to {sshd.address} (not in the figures above)" in p.stdout
    r = json.loads((tmp_path / "bench.json").read_text())
    assert r["parity"]["ok"] and r["remote"]["address"] == sshd.address


def test_fleet_one_device_down(sshd, ssh_home, x86_art, tmp_path):
    trust(ssh_home, sshd)
    inv = tmp_path / "devices.toml"
    inv.write_text(f'[[device]]\nname = "good"\naddress = "{sshd.address}"\ntarget = "x86"\n'
                   f'notes = "loopback"\n[[device]]\nname = "down"\naddress = "{sshd.user}@127.0.0.1:1"\n')
    p = cli("bench", "--inventory", inv, x86_art, "--report-dir", tmp_path / "rep", *FAST)
    assert p.returncode == 1
    fleet = json.loads((tmp_path / "rep/fleet.json").read_text())
    good, down = fleet["devices"]
    assert good["error"] is None and good["result"]["parity"]["ok"]
    assert down["result"] is None and "connection refused" in down["error"]
    md = (tmp_path / "rep/fleet.md").read_text()
    assert "| good |" in md and "| down |" in md and "**FAILED**" in md


def test_ctrl_c_during_remote_bench_leaves_no_runner(sshd, ssh_home, x86_art, tmp_path):
    trust(ssh_home, sshd)
    args = ["--reps", "100000", *FAST[2:]]  # FAST starts with --reps 1: make it run for ever
    p = subprocess.Popen([sys.executable, "-m", "litelm_edge.cli", "bench", "--remote", sshd.address,
                          str(x86_art), "--report-dir", str(tmp_path), *args],
                         stderr=subprocess.PIPE, text=True)
    for line in p.stderr:  # wait until the runner is measuring on the device
        if "[runner] parity" in line:
            break
    assert _runners(), "the runner should be running on the device now"
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=30) == 130
    deadline = time.monotonic() + 10
    while _runners() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _runners() == [] and not (tmp_path / "bench.json").exists()


def _runners() -> list:
    return [p for p in psutil.process_iter(["cmdline", "status"]) if p.info["status"] != "zombie"
            and any(a.endswith("/devices/runner.py") for a in p.info["cmdline"] or [])]
