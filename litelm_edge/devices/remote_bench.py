"""bench over SSH: push the artifact and the runner, run it on the device, fetch, judge here.

The device runs the same files as the local bench (devices/runner.py, devices/facts.py, manifest.py and the
backend's backends/<name>/runtime.py, at these paths under runner/<hash of the set>/) with the same
protocol; the host adds the same `finish()` (energy, thresholds). What the transport costs (connect,
push, fetch) is timed separately and never enters the runner's figures.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
import uuid
from pathlib import Path

from . import push as P
from ..files import sha256_file
from ..manifest import read_manifest, verified
from .bench import check_protocol, finish, runner_args, runner_files
from .remote import Remote, RemoteError
from ..config import UserError
from .runner import EXIT_PARITY, EXIT_RUNTIME_MISSING, EXIT_USER, SCRIPT

RUN_TIMEOUT = 900.0  # s, the whole runner on the device (load, parity, warmup, reps)


def runner_command(python: str, runner: str, art: str, out: str, protocol: dict,
                   install_runtime: bool) -> list[str]:
    cmd = [*python.split(), runner, art, "--out", out, *runner_args(protocol)]
    return cmd + ["--install-runtime"] if install_runtime else cmd


def _check_exit(remote: Remote, rc: int, stderr: str, python: str):
    lines = [x for x in stderr.strip().splitlines() if not x.startswith("[runner]")]
    last = lines[-1].removeprefix("error: ") if lines else f"exit code {rc}"
    if rc == 127:
        raise RemoteError(f"{remote.label}: {python} not found on the device: install python3 "
                          "and numpy there (apt-get install python3 python3-numpy) or pass "
                          "--remote-python")
    if rc == EXIT_USER:  # the artifact or a protocol value, refused by the runner before any load
        raise UserError(f"{remote.label}: {last} (on the device)")
    if rc == EXIT_RUNTIME_MISSING:
        raise RemoteError(f"{remote.label}: {last} (on the device), or rerun with "
                          "--install-runtime")
    if rc not in (0, EXIT_PARITY):
        raise RemoteError(f"{remote.label}: device runner failed (exit {rc}): {last}")


def run_on_device(remote: Remote, art_dir, protocol: dict | None = None, python: str = "python3",
                  timeout: float = RUN_TIMEOUT, install_runtime: bool = False, root=None,
                  log=print, progress=None) -> tuple[dict, dict]:
    """Push, run, fetch. Returns (raw runner JSON, transport facts)."""
    t0 = time.perf_counter()
    pushed = P.push(remote, art_dir, progress, root)
    files = {n: (p, sha256_file(p), p.stat().st_size)
             for n, p in runner_files(read_manifest(art_dir)["backend"]).items()}
    tag = hashlib.sha256(json.dumps({n: f[1] for n, f in files.items()}, sort_keys=True).encode()).hexdigest()[:16]
    up = P.sync(remote, f"runner/{tag}", files, root)  # content-addressed: a changed runner is a new folder
    out = f"{up.remote_dir}/result-{uuid.uuid4().hex[:12]}.json"
    cmd = runner_command(python, f"{up.remote_dir}/{SCRIPT}", pushed.remote_dir, out,
                         protocol or {}, install_runtime)
    t1 = time.perf_counter()
    show = lambda m: m.startswith("[runner]") and log(f"{remote.label} {m}")  # noqa: E731
    done = remote.run(cmd, timeout, on_line=show, check=False, what="the device runner")
    t2 = time.perf_counter()
    _check_exit(remote, done.rc, done.stderr, python)
    with tempfile.TemporaryDirectory() as td:
        local = P.fetch(remote, out, Path(td) / "result.json")
        raw = json.loads(local.read_text())
    remote.sftp.remove(out)
    facts = {"address": remote.label, "remote_dir": pushed.remote_dir,
             "push": {"seconds": pushed.seconds, "bytes_sent": pushed.bytes_sent,
                      "files_sent": pushed.sent, "files_skipped": pushed.skipped},
             "push_s": t1 - t0, "run_s": t2 - t1, "fetch_s": time.perf_counter() - t2}
    return raw, facts


def bench_remote(address: str, art_dir, protocol: dict | None = None, baseline=None,
                 accept_new: bool = False, log=print, cancel=None, **kw) -> dict:
    """The remote bench of one device: same protocol and judgement as the local bench."""
    from ..reports.runinfo import now
    started_at = now()
    manifest = verified(art_dir)  # every file against the manifest, before connecting
    check_protocol(protocol, manifest)
    base = json.loads(Path(baseline).read_text()) if baseline else None
    t0 = time.perf_counter()
    with Remote(address, accept_new) as remote:
        remote.cancel = cancel
        connect_s = time.perf_counter() - t0
        raw, facts = run_on_device(remote, art_dir, protocol, log=log, **kw)
    res = finish(raw, manifest, f"measured on {facts['address']} over SSH (remote bench)", base, started_at)
    res["remote"] = {**facts, "connect_s": connect_s, "total_s": time.perf_counter() - t0}
    return res


def transport_line(res: dict) -> str:
    """What the SSH transport cost, kept apart from the runner's figures."""
    t, p = res["remote"], res["remote"]["push"]
    return (f"Transport to {t['address']} (not in the figures above): connect {t['connect_s']:.2f} s, "
            f"push {t['push_s']:.2f} s ({p['bytes_sent'] / 1e6:.2f} MB sent, "
            f"{len(p['files_skipped'])} files already there), run {t['run_s']:.2f} s, "
            f"fetch {t['fetch_s']:.2f} s, total {t['total_s']:.2f} s")
