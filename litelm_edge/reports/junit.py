"""JUnit XML from bench results, so that a CI shows each threshold's verdict natively.

One <testsuite> per bench (a device, or the emulated device, or this host); in it one <testcase> per
threshold of the target and one for on-device parity. A failed threshold is a <failure> whose
message carries the value, the limit and how the value was measured; a threshold that was not
measured or not judged (energy without a baseline, speed on an emulated device) is <skipped> with
the reason, never a pass. A device that could not be reached is one failed `connect` testcase
carrying the transport error. Schema: the Ant/Jenkins JUnit XML that GitHub, GitLab and Jenkins read.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .fmt import sig


def _case(suite: ET.Element, name: str, classname: str, seconds: float = 0.0) -> ET.Element:
    return ET.SubElement(suite, "testcase", name=name, classname=classname, time=f"{seconds:.3f}")


def bench_suite(res: dict, name: str) -> ET.Element:
    """The testsuite of one bench result (bench.json)."""
    suite = ET.Element("testsuite", name=name)
    cls = f"litelm_edge.bench.{name}"  # a JUnit class name (kept stable for CI history), not a module path
    for t in res["thresholds"]:
        case = _case(suite, t["threshold"], cls)
        what = f"{t['threshold']} = {sig(t['value'])}, limit {t['limit']}; measured: {t.get('how', '')}; {res['provenance']}"
        if t["pass"] is False:
            ET.SubElement(case, "failure", message=what, type="threshold").text = what
        elif t["pass"] is None:
            ET.SubElement(case, "skipped", message=f"{t['note']} ({what})")
        else:
            ET.SubElement(case, "system-out").text = what
    p = res["parity"]
    case = _case(suite, "parity", cls, res.get("load_ms", 0.0) / 1e3)
    what = (f"top-1 agreement vs torch {sig(p['top1_agreement_vs_torch'])} (min {p['tolerance']['min_top1']}), "
            f"max abs vs build host {sig(p['max_abs_err_vs_host'])} (max {sig(p['tolerance']['max_abs_vs_host'])}) "
            f"over {p['steps']} teacher-forced steps on the device")
    if not p["ok"]:
        ET.SubElement(case, "failure", message=what, type="parity").text = what
    else:
        ET.SubElement(case, "system-out").text = what
    return suite


def error_suite(name: str, error: str) -> ET.Element:
    """A bench that never produced a result (unreachable, runtime missing): one failed testcase."""
    suite = ET.Element("testsuite", name=name)
    c = _case(suite, "connect", f"litelm_edge.bench.{name}")
    ET.SubElement(c, "failure", message=error, type="transport").text = error
    return suite


def skipped_suite(name: str, reason: str) -> ET.Element:
    """A bench that was not run (no device secret): one skipped testcase saying why."""
    suite = ET.Element("testsuite", name=name)
    ET.SubElement(_case(suite, "bench", f"litelm_edge.bench.{name}"), "skipped", message=reason)
    return suite


def fleet_suites(fleet: dict) -> list[ET.Element]:
    """One testsuite per device of a fleet report."""
    out = []
    for row in fleet["devices"]:
        if row["result"] is None:
            out.append(error_suite(row["name"], row["error"]))
        else:
            out.append(bench_suite(row["result"], row["name"]))
    return out


def write(suites: list[ET.Element], path) -> Path:
    """<testsuites> with counts filled in, written atomically."""
    from ..files import write_atomic
    root = ET.Element("testsuites", name="litelm-edge")
    totals = dict(tests=0, failures=0, errors=0, skipped=0)
    for s in suites:
        cases = s.findall("testcase")
        counts = dict(tests=len(cases), failures=sum(c.find("failure") is not None for c in cases),
                      errors=sum(c.find("error") is not None for c in cases),
                      skipped=sum(c.find("skipped") is not None for c in cases))
        s.attrib.update({k: str(v) for k, v in counts.items()})
        totals = {k: totals[k] + counts[k] for k in totals}
        root.append(s)
    root.attrib.update({k: str(v) for k, v in totals.items()})
    ET.indent(root)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n")
    return path
