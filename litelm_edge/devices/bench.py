"""bench (host side): run the device runner here, then judge its raw samples.

The runner (devices/runner.py, with devices/facts.py and the backend's backends/<name>/runtime.py:
the files a device receives, at these paths) measures; `finish` adds what needs the target's data:
the energy per inference (measured by a sensor when the runner found one, else estimated with the
target's named power model), the threshold verdicts, and where every number came from.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..config import UserError
from ..manifest import verified
from ..reports.judge import overall, verdicts, where
from ..target import latency_percentile
from . import runner as R

RUNNER = Path(R.__file__)
SCHEMA = "litelm-edge-bench/3"  # the judged bench.json; litelm_edge/schemas/bench-3.schema.json
ELF_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64"}  # ELF e_machine -> platform.machine()


def runner_files(backend: str) -> dict[str, Path]:
    """{path relative to the package root: local path}: the files the runner runs with, here
    and on a device (where they keep these paths, under the runner's upload folder)."""
    return {name: R.ROOT / name for name in (*R.FILES, R.runtime_file(backend))}


def check_protocol(protocol: dict | None, manifest: dict):
    """The runner's own range checks, here before anything starts: one line naming the option."""
    positions = (manifest.get("model") or {}).get("max_seq_len")  # a test's fake artifact has no model
    R.Protocol(**{k: v for k, v in (protocol or {}).items() if v is not None}).check(positions)


def runner_args(protocol: dict) -> list[str]:
    args = []
    for k, v in protocol.items():
        if v is not None:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def native_arch(art_dir, manifest: dict) -> tuple[str, str] | None:
    """(architecture, file) of the first native library in the artifact (an ELF file), else None."""
    for name in manifest["files"]:
        with open(Path(art_dir) / name, "rb") as f:
            head = f.read(20)
        if head[:4] == b"\x7fELF":
            e_machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
            return ELF_MACHINES.get(e_machine, f"ELF machine {e_machine}"), name
    return None


def check_runs_here(art_dir, manifest: dict):
    """An artifact holding another architecture's native code cannot run here: say where it runs."""
    import platform
    native = native_arch(art_dir, manifest)
    if native and native[0] != platform.machine():
        raise UserError(f"{art_dir} holds {native[0]} native code ({native[1]}) and this host is "
                        f"{platform.machine()}: bench it on the device with `litelm-edge bench {art_dir} "
                        "--remote user@host` (or on the emulated device, see docs/ci.md)")


def shared_runner(env=os.environ) -> str | None:
    """What this machine is when it is a CI runner shared with other jobs (its speed is not the
    device's): GitHub sets RUNNER_ENVIRONMENT=github-hosted on its own runners; another CI can say
    so with LITELM_EDGE_SHARED_RUNNER=NAME. None on a machine of one's own (self-hosted included)."""
    if env.get("LITELM_EDGE_SHARED_RUNNER"):
        return env["LITELM_EDGE_SHARED_RUNNER"]
    return "GitHub-hosted runner" if env.get("RUNNER_ENVIRONMENT") == "github-hosted" else None


def bench_local(art_dir, protocol: dict | None = None, log=print, sysfs_root: str | None = None) -> dict:
    """Run the device runner in a subprocess of this Python; returns its raw JSON.
    sysfs_root: where the runner reads energy sensors and temperatures (default /sys)."""
    art_dir = Path(art_dir)  # bench() verified it against its manifest
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "result.json"
        cmd = [sys.executable, str(RUNNER), str(art_dir), "--out", str(out), *runner_args(protocol or {})]
        cmd += ["--sysfs-root", str(sysfs_root)] if sysfs_root else []
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr.splitlines():
            if line.startswith("[runner]"):
                log(line)
        if proc.returncode in (R.EXIT_RUNTIME_MISSING, R.EXIT_USER):  # its one line
            raise UserError(proc.stderr.strip().splitlines()[-1].removeprefix("error: "))
        if proc.returncode not in (0, R.EXIT_PARITY) or not out.is_file():
            tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no output"
            raise UserError(f"device runner failed (exit {proc.returncode}): {tail}")
        return json.loads(out.read_text())


def energy(raw: dict, power: dict) -> dict:
    """Joules per prefill inference: a sensor's reading when the runner had one, else the model."""
    pre = raw["prefill_ms"]
    n = pre["n"]
    if raw.get("energy", {}).get("prefill_j") is not None:
        e = raw["energy"]
        return {"j_per_inference": e["prefill_j"] / n, "how": f"measured ({e.get('sensor', 'sensor')})"}
    if not power:
        return {"j_per_inference": None, "how": "unknown: the target has no [power] model"}
    emulated = "emulated: " if raw["device"].get("emulated") else ""  # qemu's CPU time, not the board's
    idle, full, cores = power["idle_w"], power["full_load_w"], power.get("cores") or raw["device"]["cores"]
    # cpu-time-linear: idle power for the wall time, plus the dynamic range scaled by busy cores
    j = idle * pre["wall_s"] + (full - idle) * pre["cpu_s"] / cores
    return {"j_per_inference": j / n,
            "how": f"{emulated}estimated (cpu-time-linear model, {power.get('name', 'target power model')}"
                                             + (", on emulated CPU time: not an energy figure)" if emulated else ")"),
            "model": {"idle_w": idle, "full_load_w": full, "cores": cores, "source": power.get("source")}}


def finish(raw: dict, manifest: dict, provenance: str, baseline: dict | None = None,
           started_at: str | None = None) -> dict:
    """The judged bench.json from the runner's raw JSON. started_at: when the bench began (UTC)."""
    from ..reports import runinfo
    res = dict(raw, schema=SCHEMA, where=where(raw, manifest),
               run=runinfo.record(started_at or runinfo.now()))
    arch = manifest.get("arch")
    res["provenance"] = {"emulated": "emulated device: a function check, not a speed figure",
                         "host": f"{provenance}, on a {raw['device'].get('machine')} host standing in for the "
                                 f"{arch} device of target {manifest['target']}: host figures, not the device's",
                         "hosted": f"{provenance}, on a shared CI runner ({raw['device'].get('shared_runner')}): "
                                   "a function check, not the device's speed",
                         "device": provenance}[res["where"]]
    res["size_mb"] = manifest["size_bytes"] / 1e6
    res["inferences_per_s"] = 1e3 / raw["prefill_ms"]["mean"]
    # the judgement, with the runner's own reading kept beside it (sensor found, or why not)
    res["energy"] = dict(energy(raw, manifest.get("power", {})), runner=raw.get("energy"))
    res["thresholds"] = verdicts(res, manifest.get("thresholds", {}), baseline)
    res["latency_percentile"] = latency_percentile(manifest.get("thresholds", {}))
    res["manifest"] = {k: manifest.get(k) for k in ("target", "backend", "runtime", "precision",
                                                    "artifact_id", "n_params", "size_bytes", "tools",
                                                    "size_breakdown", "weight_bytes", "arch",
                                                    # parity: the build's quality gate (reports show it)
                                                    "parity")}
    build_ok = (manifest.get("parity") or {}).get("ok", True)  # False only for a build made with the gate off
    res["verdict"] = overall(bool(raw["parity"]["ok"]) and bool(build_ok), res["thresholds"])
    res["ok"] = res["verdict"] != "fail"  # nothing failed; "not judged" is not a pass (see verdict)
    return res


def bench(art_dir, protocol: dict | None = None, baseline=None, log=print, sysfs_root: str | None = None) -> dict:
    """The local bench: this machine is the device."""
    from ..reports.runinfo import now
    started_at = now()
    manifest = verified(art_dir)
    check_protocol(protocol, manifest)
    check_runs_here(art_dir, manifest)
    base = json.loads(Path(baseline).read_text()) if baseline else None
    raw = bench_local(art_dir, protocol, log, sysfs_root)
    if shared_runner():  # labelled like an emulated result: no speed threshold is judged on it
        raw["device"]["shared_runner"] = shared_runner()
    return finish(raw, manifest, "measured on this host (local bench)", base, started_at)
