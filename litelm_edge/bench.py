"""bench (host side): run the device runner here, then judge its raw samples.

The runner (device_runner.py, with device_facts.py and the backend's runtime.py beside it: the
files a device receives) measures; `finish` adds what needs the target's data: the energy
per inference (measured by a sensor when the runner found one, else estimated with the target's
named power model), the threshold verdicts, and where every number came from.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from . import device_runner as R
from .config import UserError
from .manifest import read_manifest, verified  # noqa: F401 (read_manifest: imported from here by older callers)

RUNNER = Path(R.__file__)


def runner_files(backend: str) -> dict[str, Path]:
    """{name relative to the runner's folder: local path}: the files the runner runs with, here
    and on a device (where they keep these names)."""
    here = RUNNER.parent
    return {name: here / name for name in (*R.FILES, R.runtime_file(backend))}


def runner_args(protocol: dict) -> list[str]:
    args = []
    for k, v in protocol.items():
        if v is not None:
            args += [f"--{k.replace('_', '-')}", str(v)]
    return args


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
        if proc.returncode == R.EXIT_RUNTIME_MISSING:
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
    idle, full, cores = power["idle_w"], power["full_load_w"], power.get("cores") or raw["device"]["cores"]
    # cpu-time-linear: idle power for the wall time, plus the dynamic range scaled by busy cores
    j = idle * pre["wall_s"] + (full - idle) * pre["cpu_s"] / cores
    return {"j_per_inference": j / n, "how": f"estimated (cpu-time-linear model, {power.get('name', 'target power model')})",
            "model": {"idle_w": idle, "full_load_w": full, "cores": cores, "source": power.get("source")}}


def verdicts(res: dict, thresholds: dict, baseline: dict | None) -> list[dict]:
    """One row per threshold of the target: value, limit, pass/fail."""
    values = {
        "max_latency_ms": res["prefill_ms"]["p50"], "min_inferences_per_s": res["inferences_per_s"],
        "min_qps": res["qps"]["qps"], "max_size_mb": res["size_mb"],
        "min_decode_tok_s": res["decode_tok_s"]["mean"],
    }
    if baseline and res["energy"]["j_per_inference"] and baseline["energy"]["j_per_inference"]:
        values["min_energy_reduction"] = 1 - res["energy"]["j_per_inference"] / baseline["energy"]["j_per_inference"]
    rows = []
    for key, limit in thresholds.items():
        v = values.get(key)
        ok = None if v is None else (v <= limit if key.startswith("max_") else v >= limit)
        rows.append({"threshold": key, "value": v, "limit": limit, "pass": ok,
                     "note": "needs --baseline (the fp32 build's bench.json)" if v is None else ""})
    return rows


def finish(raw: dict, manifest: dict, provenance: str, baseline: dict | None = None) -> dict:
    res = dict(raw)
    res["provenance"] = "emulated device: a function check, not a speed figure" if raw["device"].get("emulated") else provenance
    res["size_mb"] = manifest["size_bytes"] / 1e6
    res["inferences_per_s"] = 1e3 / raw["prefill_ms"]["mean"]
    # the judgement, with the runner's own reading kept beside it (sensor found, or why not)
    res["energy"] = dict(energy(raw, manifest.get("power", {})), runner=raw.get("energy"))
    res["thresholds"] = verdicts(res, manifest.get("thresholds", {}), baseline)
    res["manifest"] = {k: manifest.get(k) for k in ("target", "backend", "runtime", "precision", "artifact_id",
                                                    "n_params", "size_bytes", "tools", "size_breakdown")}
    res["ok"] = bool(raw["parity"]["ok"]) and all(r["pass"] is not False for r in res["thresholds"])
    return res


def bench(art_dir, protocol: dict | None = None, baseline=None, log=print, sysfs_root: str | None = None) -> dict:
    """The local bench: this machine is the device."""
    manifest = verified(art_dir)
    base = json.loads(Path(baseline).read_text()) if baseline else None
    raw = bench_local(art_dir, protocol, log, sysfs_root)
    return finish(raw, manifest, "measured on this host (local bench)", base)
