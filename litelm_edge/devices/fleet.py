"""bench on a fleet: many devices in parallel, one combined report with a row per device.

Devices come from repeated --remote or from an inventory TOML:

    [[device]]
    name = "pi-kitchen"          # unique, used in the report
    address = "pi@10.0.0.21"     # user@host[:port] or a ~/.ssh/config alias
    target = "rpi4"              # optional: checked against the artifact's target
    notes = "heatsink, no fan"   # optional, copied into the report

A bounded thread pool runs the devices; one failing (unreachable, parity, timeout) becomes a failed
row and never loses the others' results. Ctrl-C stops every device's remote run before exiting.
"""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import UserError, read_toml

WORKERS = 4  # devices benchmarked at once
SCHEMA = "litelm-edge-fleet/3"  # litelm_edge/schemas/fleet-3.schema.json


@dataclass
class Device:
    name: str  # unique, used in the report
    address: str  # user@host[:port] or a ~/.ssh/config alias
    target: str | None = None  # None: whatever the artifact targets
    notes: str = ""  # copied into the report


def read_inventory(path) -> list[Device]:
    from ..config import from_dict, unknown_key
    from .remote import parse_address
    data = read_toml(path)
    for table in data:
        if table != "device":
            raise unknown_key(table, ["device"], str(path), "table")
    rows = data.get("device")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: no [[device]] tables: list devices as [[device]] with name and "
                        "address")
    devices = [from_dict(Device, row, f"{path} [[device]] #{i + 1}") for i, row in enumerate(rows)]
    for d in devices:
        parse_address(d.address)  # OpenSSH's rules, before any connection
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: device names must be unique, got {', '.join(names)}")
    return devices


def devices_from(remotes: list[str], inventory=None) -> list[Device]:
    devices = read_inventory(inventory) if inventory else []
    return devices + [Device(name=a, address=a) for a in remotes]


def _one(device: Device, target: str, cancel: threading.Event, bench_one) -> dict:
    row = {**asdict(device), "ok": False, "verdict": "fail", "error": None, "result": None}
    if device.target and device.target != target:
        row["error"] = (f"device is {device.target} but the artifact is for {target}: build for "
                        f"{device.target} and bench that artifact")
        return row
    try:
        res = bench_one(device, cancel)
    except UserError as e:
        row["error"] = str(e)
    except Exception as e:  # one device's bug must not lose the other rows
        row["error"] = f"{type(e).__name__}: {e}"
    else:
        row.update(ok=bool(res["ok"]), result=res, verdict=res.get("verdict"))
        if not res["parity"]["ok"]:
            row["error"] = "on-device parity failed: the artifact's outputs disagree with the reference"
    return row


def run_fleet(devices: list[Device], target: str, bench_one, workers: int = WORKERS) -> list[dict]:
    """bench_one(device, cancel_event) -> result dict, for each device on a bounded pool."""
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(devices)))) as pool:
        futures = [pool.submit(_one, d, target, cancel, bench_one) for d in devices]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            cancel.set()  # each running device kills its remote process group, then returns
            for f in futures:
                f.cancel()
            raise


def bench_fleet(devices: list[Device], art_dir, protocol=None, baseline=None,
                workers: int = WORKERS, log=print, **kw) -> dict:
    from ..manifest import verified
    from ..reports import runinfo
    from .bench import check_protocol
    from .remote_bench import bench_remote

    started_at = runinfo.now()
    manifest = verified(art_dir)  # once, before any device: a bad artifact or option is one line
    check_protocol(protocol, manifest)

    def bench_one(device, cancel):
        return bench_remote(device.address, art_dir, protocol, baseline,
                            log=lambda m: log(f"[{device.name}] {m}"), cancel=cancel, **kw)

    rows = run_fleet(devices, manifest["target"], bench_one, workers)
    return {"schema": SCHEMA, "artifact": str(art_dir),
            "target": manifest["target"], "artifact_id": manifest.get("artifact_id"),
            "protocol": protocol or {}, "ok": all(r["ok"] for r in rows), "devices": rows,
            "run": runinfo.record(started_at)}


def _cell(v, fmt="{:.1f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def fleet_markdown(report: dict) -> str:
    """One row per device; failed devices say why in one line."""
    out = [f"## Fleet bench: {report['target']} artifact {report.get('artifact_id') or ''}", "",
           "| device | address | status | CPU | threads (affinity) | prefill p50, ms | decode, tok/s | QPS | "
           "energy/inference, J | parity top-1 | notes |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["devices"]:
        res = r["result"]
        if res is None:
            out.append(f"| {r['name']} | {r['address']} | **FAILED**: {r['error']} | | | | | | | | "
                       f"{r['notes']} |")
            continue
        e = res["energy"]
        word = r.get("verdict") or ("pass" if r["ok"] else "fail")
        status = f"**FAIL**{': ' + r['error'] if r['error'] else ''}" if word == "fail" else word
        energy = f"{_cell(e['j_per_inference'], '{:.4g}')} ({e['how'].split(' (')[0]})"
        out.append(f"| {r['name']} | {res['remote']['address']} | {status} | "
                   f"{res['device'].get('cpu_model') or res['device'].get('cpu', '?')} | "
                   f"{res.get('protocol', {}).get('threads', '?')} ({res['device'].get('affinity', '?')}) | "
                   f"{_cell(res['prefill_ms']['p50'], '{:.2f}')} | {_cell(res['decode_tok_s']['mean'])} | "
                   f"{_cell(res['qps']['qps'])} | {energy} | "
                   f"{_cell(res['parity']['top1_agreement_vs_torch'], '{:.3f}')} | {r['notes']} |")
    n_ok = sum(r["ok"] for r in report["devices"])
    out += ["", f"{n_ok} of {len(report['devices'])} devices passed."]
    return "\n".join(out) + "\n"


def entries(report: dict) -> list[dict]:
    """The fleet's devices as comparison entries (compare.py)."""
    return [{"name": r["name"], "result": r["result"], "error": r["error"]} for r in report["devices"]]


def write_fleet(report: dict, out_dir) -> dict:
    """fleet.json (every device's full result), fleet.md and fleet.html in out_dir, written atomically."""
    from ..files import write_atomic
    from ..reports import compare

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "fleet.json", "md": out / "fleet.md", "html": out / "fleet.html"}
    write_atomic(paths["json"], json.dumps(report, indent=1))
    write_atomic(paths["md"], fleet_markdown(report))
    title = f"Fleet bench: {report['target']} artifact {report.get('artifact_id') or ''}"
    write_atomic(paths["html"], compare.to_html(title, entries(report)))
    return paths


def bench_devices(art_dir, remotes: list[str], inventory, protocol: dict, baseline, out_dir,
                  check: bool = False, workers: int = WORKERS, log=print, junit=None, fmt=None,
                  **kw) -> tuple[int, str]:
    """The CLI's remote bench: one --remote gives the local bench's report, more give a fleet's.

    Returns (exit code, Markdown; with fmt the rows of reports/rows.py). Exit 1 when a device failed
    or its parity failed (a mismatch is a failed bench), or with check=True when a threshold failed
    on any device. junit: a JUnit XML file with one testsuite per device.
    """
    from ..reports import junit as J, report, rows
    from .remote_bench import bench_remote, transport_line

    if len(remotes) == 1 and not inventory:
        try:
            res = bench_remote(remotes[0], art_dir, protocol, baseline, log=log, **kw)
        except UserError as e:  # unreachable: a failed testcase carrying the transport error
            junit and J.write([J.error_suite(remotes[0], str(e))], junit)
            raise
        report.write(res, out_dir)
        junit and J.write([J.bench_suite(res, res["remote"]["address"])], junit)
        bad = not res["parity"]["ok"] or (check and not res["ok"])
        return int(bad), rows.render(fmt, [res]) if fmt else report.to_markdown(res) + "\n" + transport_line(res) + "\n"
    devices = devices_from(remotes, inventory)
    fleet = bench_fleet(devices, art_dir, protocol, baseline, workers, log=log, **kw)
    write_fleet(fleet, out_dir)
    junit and J.write(J.fleet_suites(fleet), junit)
    bad = any(r["error"] for r in fleet["devices"]) or (check and not fleet["ok"])
    done = [d["result"] for d in fleet["devices"] if d["result"] is not None]
    return int(bad), rows.render(fmt, done) if fmt else fleet_markdown(fleet)
