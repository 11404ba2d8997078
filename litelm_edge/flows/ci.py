"""CI artifacts per device: one bundle per target and precision, and one summary over all bundles.

A bundle (`<target>-<precision>/`) holds the built artifact (artifact/, with manifest.json), one
folder per bench (bench.json, bench.md, bench.html), junit.xml (a testsuite per bench) and
bundle.json (what was benched where, and why not). Where a target is benched is decided from data:
on this machine when the target's [target] arch is this machine's (or unset), else on the emulated device
(labelled emulated); on a real device too when $LITELM_DEVICE_<TARGET> names one (user@host[:port];
its key in $LITELM_DEVICE_<TARGET>_KEY), skipped with a notice otherwise.
"""
from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..config import UserError
from ..devices.runner import Protocol

BUNDLE_SCHEMA = "litelm-edge-bundle/1"
SUMMARY_SCHEMA = "litelm-edge-summary/2"  # litelm_edge/schemas/summary-2.schema.json
# The bench protocol of a CI device job (tools/ci_device.py's defaults): the runner's, shortened to
# fit a job that also builds; the figures say which protocol made them.
PROTOCOL = replace(Protocol(), reps=3, warmup=1, gen_len=32, concurrency=2)


@dataclass
class Bench:
    """One place a bundle's artifact is benchmarked."""
    name: str  # runner (this machine), emulated (qemu arm64), device (a real one over SSH)
    address: str | None = None  # user@host[:port] or ssh-config alias; None: this machine
    skipped: str | None = None  # why it is not run
    accept_new: bool = False  # record an unknown host key (a device secret without known_hosts)


def secret_name(target: str) -> str:
    return "LITELM_DEVICE_" + re.sub(r"[^A-Z0-9]", "_", target.upper())


def plan(target: str, emulated: str | None, env=os.environ) -> list[Bench]:
    """Where `target` is benched: here or on the emulated device (address `emulated`), and on the
    real device its secret names."""
    from ..backends import load_target
    name, t = load_target(target)
    arch = t["target"].get("arch")
    out = [Bench("runner")] if arch in (None, platform.machine()) else [
        Bench("emulated", emulated) if emulated else
        Bench("emulated", skipped=f"{arch} target and no emulated device: start one with "
                                  "`tools/emulated_device.py start` and pass --emulated")]
    secret = secret_name(name)
    if env.get(secret):
        out.append(Bench("device", env[secret], accept_new=not env.get(f"{secret}_KNOWN_HOSTS")))
    else:
        out.append(Bench("device", skipped=f"no real {name} device: set the repository secret {secret} "
                                           f"(user@host[:port]) and {secret}_KEY (its private key)"))
    return out


def _bench_one(b: Bench, art: Path, protocol: dict, log) -> dict:
    from ..devices.bench import bench
    from ..devices.remote_bench import bench_remote
    if b.address is None:
        return bench(art, protocol, log=log)
    return bench_remote(b.address, art, protocol, accept_new=b.accept_new, log=log)


def device_bundle(checkpoint, target: str, precision: str | None, out_root, benches: list[Bench],
                  protocol: dict, data=None, log=print) -> tuple[int, Path]:
    """Build, bench everywhere planned, write the bundle. Returns (exit code, bundle folder):
    1 when the build, a bench or a judged threshold failed; skips and 'not judged' are not failures."""
    from ..reports import junit as J
    from ..reports import report
    from .build import build
    from ..backends import load_target
    name, tgt = load_target(target)
    precision = precision or tgt["target"]["precision"]
    bundle = Path(out_root) / f"{name}-{precision}"
    bundle.mkdir(parents=True, exist_ok=True)
    index = {"schema": BUNDLE_SCHEMA, "target": target, "precision": precision, "benches": []}
    try:
        manifest = build(checkpoint, target, bundle / "artifact", precision, data, log=log)
    except UserError as e:
        J.write([J.error_suite(f"{target}-{precision}.build", str(e))], bundle / "junit.xml")
        _write_index(bundle, dict(index, error=f"build failed: {e}"))
        raise
    index["artifact_id"] = manifest["artifact_id"]
    suites, code = [], 0
    for b in benches:
        entry = dict(asdict(b), verdict="skipped" if b.skipped else None, error=None)
        suite_name = f"{target}-{precision}.{b.name}"
        if b.skipped:
            log(f"::notice title={suite_name} skipped::{b.skipped}")
            suites.append(J.skipped_suite(suite_name, b.skipped))
        else:
            try:
                res = _bench_one(b, bundle / "artifact", protocol, log)
            except UserError as e:  # unreachable, runtime missing, runner failed: a failed testcase
                log(f"::error title={suite_name}::{e}")
                entry.update(verdict="fail", error=str(e))
                suites.append(J.error_suite(suite_name, str(e)))
            else:
                report.write(res, bundle / b.name)
                entry["verdict"] = res["verdict"]
                suites.append(J.bench_suite(res, suite_name))
        code |= entry["verdict"] == "fail"
        index["benches"].append(entry)
    J.write(suites, bundle / "junit.xml")
    _write_index(bundle, index)
    return int(code), bundle


def _write_index(bundle: Path, index: dict):
    from ..files import write_atomic
    write_atomic(bundle / "bundle.json", json.dumps(index, indent=1))


def verify_artifact(art: Path):
    """Every file of the artifact matches its manifest (sha256, size), and none is unlisted."""
    from ..manifest import verify
    listed = verify(art)
    extra = sorted(str(p.relative_to(art)) for p in art.rglob("*") if p.is_file()
                   and str(p.relative_to(art)) not in listed)
    if extra:
        raise UserError(f"{art / extra[0]} is not in the artifact's manifest: the bundle was altered; "
                        "rebuild it")


def read_bundle(bundle: Path) -> dict:
    """bundle.json with each bench's result loaded; the artifact verified against its manifest."""
    p = bundle / "bundle.json"
    if not p.is_file():
        raise UserError(f"{bundle}: not a bundle (no bundle.json): pass folders written by tools/ci_device.py")
    index = json.loads(p.read_text())
    if "error" not in index:
        verify_artifact(bundle / "artifact")
    for b in index["benches"]:
        f = bundle / b["name"] / "bench.json"
        b["result"] = json.loads(f.read_text()) if f.is_file() else None
        if b["verdict"] not in ("skipped", "fail") and b["result"] is None:
            raise UserError(f"{f} is missing: the bundle is incomplete; rerun its device job")
    return index


def find_bundles(roots: list) -> list[Path]:
    found = sorted({p.parent for r in roots for p in Path(r).rglob("bundle.json")})
    if not found:
        raise UserError(f"no bundles (bundle.json) under {', '.join(map(str, roots))}: download the device "
                        "jobs' artifacts first")
    return found


def summarize(roots: list, out_dir) -> tuple[int, str]:
    """summary.json/.md/.html comparing every bundle's benches. Exit 1 when a bench failed; a
    bundle whose files do not match its manifest raises (exit 2), naming the file."""
    from ..reports import compare, runinfo
    from ..files import write_atomic
    started_at = runinfo.now()
    bundles = [dict(read_bundle(b), name=b.name) for b in find_bundles(roots)]
    entries = [{"name": f"{x['name']} @ {b['name']}", "result": b["result"],
                "error": b["error"] or x.get("error"),
                "skipped": b["skipped"]} for x in bundles for b in x["benches"]]
    entries += [{"name": x["name"], "result": None, "error": x["error"], "skipped": None}
                for x in bundles if x.get("error")]
    doc = {"schema": SUMMARY_SCHEMA, "ok": all(compare.verdict(e) != "fail" for e in entries),
           "bundles": bundles, "run": runinfo.record(started_at)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = "litelm-edge: devices and precisions side by side"
    md = compare.to_markdown(title, entries)
    write_atomic(out / "summary.json", json.dumps(doc, indent=1))
    write_atomic(out / "summary.md", md)
    write_atomic(out / "summary.html", compare.to_html(title, entries))
    return int(not doc["ok"]), md
