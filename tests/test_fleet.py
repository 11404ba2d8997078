"""Inventory parsing, the bounded pool, failure isolation and the combined report."""
from __future__ import annotations

import json
import threading

import pytest

from litelm_edge.config import UserError
from litelm_edge.devices import fleet as F
from litelm_edge.devices.remote import RemoteError


def _result(p50: float, parity_ok: bool = True) -> dict:
    """The parts of a bench result that the fleet report reads (fleet.md and fleet.html)."""
    return {"ok": parity_ok, "verdict": "pass" if parity_ok else "fail",
            "parity": {"ok": parity_ok, "top1_agreement_vs_torch": 1.0},
            "remote": {"address": "u@h:22"}, "device": {"cpu_model": "Cortex-A72"},
            "energy": {"j_per_inference": 0.01, "how": "estimated (cpu-time-linear model, x)"},
            "prefill_ms": {"p50": p50, "p99": 2 * p50, "samples": [p50, 2 * p50]},
            "decode_tok_s": {"mean": 100.0}, "qps": {"qps": 50.0}, "size_mb": 1.0, "where": "device",
            "thresholds": [], "latency_percentile": "p99",
            "manifest": {"target": "x86", "precision": "fp32"}}


def test_inventory(tmp_path):
    p = tmp_path / "devices.toml"
    p.write_text('[[device]]\nname = "pi"\naddress = "pi@10.0.0.2"\ntarget = "rpi4"\n'
                 'notes = "no fan"\n[[device]]\nname = "box"\naddress = "me@box:2222"\n')
    devs = F.devices_from(["extra@h"], p)
    assert [(d.name, d.address, d.target, d.notes) for d in devs] == [
        ("pi", "pi@10.0.0.2", "rpi4", "no fan"), ("box", "me@box:2222", None, ""),
        ("extra@h", "extra@h", None, "")]
    p.write_text('[[device]]\nname = "pi"\nadress = "typo"\n')
    with pytest.raises(UserError, match="unknown key 'adress'.*did you mean 'address'"):
        F.read_inventory(p)
    p.write_text('[[device]]\nname = "a"\naddress = "x"\n[[device]]\nname = "a"\naddress = "y"\n')
    with pytest.raises(UserError, match="unique"):
        F.read_inventory(p)


def test_pool_is_bounded_and_failures_are_isolated(tmp_path):
    devices = [F.Device(f"d{i}", f"u@h{i}") for i in range(7)]
    devices.append(F.Device("wrong", "u@w", target="rpi4"))
    running, peak, lock = [0], [0], threading.Lock()
    gate = threading.Barrier(3)  # the first three run together: the pool is really parallel

    def bench_one(device, cancel):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            if device.name in ("d0", "d1", "d2"):
                gate.wait(timeout=10)
            if device.name == "d3":
                raise RemoteError("u@h3: connection refused: is sshd running")
            if device.name == "d4":
                raise ZeroDivisionError("bug")
            return _result(1.0, parity_ok=device.name != "d5")
        finally:
            with lock:
                running[0] -= 1

    rows = F.run_fleet(devices, "x86", bench_one, workers=3)
    assert peak[0] == 3
    by = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == [d.name for d in devices]
    assert [n for n, r in by.items() if r["ok"]] == ["d0", "d1", "d2", "d6"]
    assert by["d3"]["error"].endswith("is sshd running") and by["d3"]["result"] is None
    assert by["d4"]["error"] == "ZeroDivisionError: bug"
    assert by["d5"]["error"].startswith("on-device parity failed") and not by["d5"]["ok"]
    assert "artifact is for x86" in by["wrong"]["error"]
    report = {"target": "x86", "artifact_id": "abc", "ok": False, "devices": rows}
    md = F.fleet_markdown(report)
    assert sum(x.startswith("|") for x in md.splitlines()) == 2 + 8 and "| d3 | u@h3 | **FAILED**: u@h3: connection refused" in md
    assert "4 of 8 devices passed." in md
    paths = F.write_fleet(report, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["devices"][3]["error"] == by["d3"]["error"]
    page = paths["html"].read_text()
    assert page.count("<svg") == 2 and "d3: connection refused" not in page and "u@h3: connection refused" in page
