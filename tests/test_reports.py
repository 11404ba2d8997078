"""What bench writes for machines and people: JUnit, JSON that its schema accepts, self-contained
HTML with plots, and verdicts that never call an emulated or unmeasured result a pass."""
from __future__ import annotations

import copy
import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from conftest import cli
from litelm_edge import manifest as mf
from litelm_edge import schemas
from litelm_edge.config import UserError
from litelm_edge.devices import bench as B
from litelm_edge.reports import report
from x86_artifact import x86_artifact

PROTO = ["--reps", "2", "--warmup", "1", "--prompt-len", "16", "--gen-len", "8", "--concurrency", "2"]
LIMITS = {"max_latency_ms": 1e-3, "min_inferences_per_s": 1.0, "max_size_mb": 100.0,
          "min_energy_reduction": 0.4}


@pytest.fixture(scope="module")
def judged(tiny_run, data_dir, tmp_path_factory):
    """The real x86 artifact with thresholds that make exactly one fail (latency under 1 µs),
    benched through the CLI with --junit and --check."""
    art = tmp_path_factory.mktemp("judged") / "art"
    shutil.copytree(x86_artifact(tiny_run, data_dir, tmp_path_factory), art)
    m = json.loads((art / "manifest.json").read_text())
    mf.write(art, dict(m, thresholds=LIMITS))  # sealed again: a new artifact id for the new thresholds
    out = art.parent / "report"
    r = cli("bench", art, *PROTO, "--report-dir", out, "--junit", out / "junit.xml", "--check", check=False)
    return art, out, r


def test_check_exits_1_on_the_failed_threshold(judged):
    _, _, r = judged
    assert r.returncode == 1, r.stderr
    assert "| max_latency_ms |" in r.stdout and "**FAIL**" in r.stdout and "Overall: FAIL" in r.stdout


def test_junit_has_a_case_per_threshold_and_parity(judged):
    _, out, _ = judged
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == [*LIMITS, "parity"]
    fail = cases["max_latency_ms"].find("failure")
    assert fail is not None and re.search(r"max_latency_ms = [\d.]+, limit 0.001; measured: prefill p99, ms, of 20 "
                                          r"prefills of 16 tokens", fail.get("message"))
    skipped = cases["min_energy_reduction"].find("skipped")
    assert skipped is not None and "needs --baseline" in skipped.get("message")
    assert all(cases[k].find("failure") is None and cases[k].find("skipped") is None
               for k in ("min_inferences_per_s", "max_size_mb", "parity"))
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "1", "1")


def test_bench_json_matches_its_schema(judged):
    import jsonschema
    _, out, _ = judged
    doc = json.loads((out / "bench.json").read_text())
    assert doc["schema"] == "litelm-edge-bench/3"
    schemas.validate(doc)
    broken = copy.deepcopy(doc)
    broken["thresholds"][0]["pass"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(broken)
    del broken["latency_percentile"]
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(broken)


def test_html_is_self_contained_with_its_plots(judged):
    _, out, _ = judged
    page = (out / "bench.html").read_text()
    assert page.count("<svg") == 4  # prefill distribution, decode sequence, size by dtype, thresholds
    assert "<script" not in page and not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "@import" not in page and "url(http" not in page
    assert "Latency threshold basis: prefill p99" in page
    assert "Latency threshold basis: prefill p99" in (out / "bench.md").read_text()


def _refinish(out, **device) -> tuple[dict, dict]:
    """A real bench result judged again as if it came from another kind of machine."""
    res = json.loads((out / "bench.json").read_text())
    raw = dict(res, device=dict(res["device"], **device))
    manifest = dict(res["manifest"], thresholds=LIMITS, power={"idle_w": 2.7, "full_load_w": 6.4, "cores": 4})
    return raw, manifest


def test_emulated_device_judges_no_speed_and_labels_energy(judged):
    _, out, _ = judged
    raw, manifest = _refinish(out, emulated=True)
    r = B.finish(raw, manifest, "measured on x over SSH (remote bench)")
    rows = {t["threshold"]: t for t in r["thresholds"]}
    assert rows["max_latency_ms"]["pass"] is None and rows["max_latency_ms"]["note"].startswith("not judged: emulated")
    assert rows["min_inferences_per_s"]["pass"] is None
    assert rows["max_size_mb"]["pass"] is True  # a size is a size, emulated or not
    assert r["energy"]["how"].startswith("emulated: estimated") and "not an energy figure" in r["energy"]["how"]
    assert r["verdict"] == "not judged" and r["ok"]
    md = report.to_markdown(r)
    assert "Overall: PASS" not in md and "Overall: NOT JUDGED" in md
    schemas.validate(r)


def test_nothing_measured_is_not_a_pass(judged):
    """rpi4's only threshold is the energy reduction: without a baseline nothing is judged."""
    _, out, _ = judged
    raw, manifest = _refinish(out)
    r = B.finish(raw, dict(manifest, thresholds={"min_energy_reduction": 0.4}), "measured here")
    assert r["verdict"] == "not judged" and "Overall: PASS" not in report.to_markdown(r)


def test_another_architecture_is_a_host_not_the_device(judged):
    _, out, _ = judged
    raw, manifest = _refinish(out)
    r = B.finish(raw, dict(manifest, target="android", arch="aarch64"), "measured on this host (local bench)")
    assert r["where"] == "host" and "not the device's" in r["provenance"] and "android" in r["provenance"]
    assert next(t for t in r["thresholds"] if t["threshold"] == "max_latency_ms")["pass"] is None


def test_latency_is_judged_on_the_named_percentile(judged):
    _, out, _ = judged
    res = json.loads((out / "bench.json").read_text())
    value = lambda th: B.verdicts(res, th, None)[0]["value"]  # noqa: E731
    assert value({"max_latency_ms": 1.0}) == res["prefill_ms"]["p99"]
    assert value({"max_latency_ms": 1.0, "latency_percentile": "p50"}) == res["prefill_ms"]["p50"]
    with pytest.raises(UserError, match="latency_percentile = 'p95': use one of p50, p90, p99"):
        value({"max_latency_ms": 1.0, "latency_percentile": "p95"})


def test_foreign_native_code_is_sent_to_the_device(judged, tmp_path):
    """An artifact holding aarch64 machine code: the local bench names --remote, not an install."""
    from litelm_edge.files import sha256_file
    art, _, _ = judged
    other = tmp_path / "art"
    shutil.copytree(art, other)
    elf = bytearray(64)
    elf[:6], elf[18:20] = b"\x7fELF\x02\x01", (183).to_bytes(2, "little")  # ELF64, little-endian, EM_AARCH64
    (other / "model.so").write_bytes(bytes(elf))
    m = json.loads((other / "manifest.json").read_text())
    m["files"]["model.so"] = {"sha256": sha256_file(other / "model.so"), "size": 64}
    mf.write(other, m)
    r = cli("bench", other, *PROTO, check=False)
    assert r.returncode == 2 and "holds aarch64 native code (model.so)" in r.stderr
    assert "--remote user@host" in r.stderr and "pip install" not in r.stderr


def test_latency_axis_fits_the_samples_and_marks_the_limit(judged, monkeypatch):
    """~0.2 ms samples and a 100 ms limit: the axis fits the samples, the limit is named at the edge;
    a limit near the data is drawn on the axis."""
    from litelm_edge.reports import plots
    left, right, shown = plots.axis_range([0.9, 1.0, 1.1], 100.0)
    assert (left, shown) == (pytest.approx(0.89), False) and right < 1.2
    left, right, shown = plots.axis_range([0.9, 1.0, 1.1], 1.25)
    assert shown and right > 1.25 and left == pytest.approx(0.89)
    monkeypatch.setattr(plots, "_svg", lambda fig: fig)  # the figure itself, to read its axes
    res = json.loads((judged[1] / "bench.json").read_text())
    far = dict(res, thresholds=[dict(res["thresholds"][0], limit=1e5)])
    ax = plots.prefill_distribution(far).axes[0]
    assert ax.get_xlim()[1] < 2 * max(res["prefill_ms"]["samples"])
    assert any("off the axis" in t.get_text() for t in ax.texts)
    bars = plots.compare_metrics([res, dict(res, where="emulated")]).axes
    assert all(a.get_xscale() == "linear" and a.get_xlim()[0] == 0 for a in bars)  # bars from zero, no log
