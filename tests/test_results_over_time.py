"""Results that keep over time: every bench.json says when, by what (version, commit) and where it
was made; `bench -o json|csv|md` prints llama-bench's rows; `compare` sets runs side by side with
their spread; reports are readable by others like any build output."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
import socket
import stat
import subprocess

import pytest

from conftest import cli
from litelm_edge import schemas
from litelm_edge.reports import compare_runs, rows, runinfo
from x86_artifact import x86_artifact

PROTO = ["--reps", "2", "--warmup", "1", "--prompt-len", "16", "--gen-len", "8", "--concurrency", "2"]


@pytest.fixture(scope="module")
def two_runs(tiny_run, data_dir, tmp_path_factory):
    """The x86 artifact benched twice, the second with -o csv (rows on stdout, reports still written)."""
    art = x86_artifact(tiny_run, data_dir, tmp_path_factory)
    out = tmp_path_factory.mktemp("runs")
    first = cli("bench", art, *PROTO, "--report-dir", out / "a")
    second = cli("bench", art, *PROTO, "--report-dir", out / "b", "-o", "csv")
    return out, first, second


def _utc(s: str) -> dt.datetime:
    assert s.endswith("Z")
    return dt.datetime.fromisoformat(s.removesuffix("Z") + "+00:00")


def test_bench_json_records_when_what_and_where(two_runs):
    out, _, _ = two_runs
    doc = json.loads((out / "a/bench.json").read_text())
    schemas.validate(doc)
    run = doc["run"]
    assert _utc(run["started_at"]) <= _utc(run["finished_at"]) <= dt.datetime.now(dt.UTC)
    assert run["version"] == runinfo.version() and run["host"] == socket.gethostname()
    assert doc["device"]["hostname"] == platform.node()
    assert run["commit"] == runinfo.commit()  # this checkout's HEAD (tests run from one)
    import jsonschema
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(dict(doc, run=dict(run, started_at="06/12/2026 02:00")))
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate({k: v for k, v in doc.items() if k != "run"})


def test_commit_is_the_checkouts_or_none(tmp_path):
    assert runinfo.commit(tmp_path) is None  # an installed wheel: no checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert runinfo.commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert runinfo.commit(tmp_path) == head + "-dirty"


def test_output_csv_is_one_row_per_measurement(two_runs):
    out, _, second = two_runs
    table = list(csv.DictReader(io.StringIO(second.stdout)))
    assert [r["test"] for r in table] == ["pp16", "tg8", "qps2"]
    doc = json.loads((out / "b/bench.json").read_text())  # -o prints rows; the reports are still written
    assert all(r["started_at"] == doc["run"]["started_at"] and r["cpu"] == doc["device"]["cpu"]
               and r["artifact_id"] == doc["manifest"]["artifact_id"] for r in table)
    assert float(table[0]["mean"]) == pytest.approx(doc["prefill_ms"]["mean"])
    assert float(table[1]["stddev"]) == pytest.approx(doc["decode_tok_s"]["std"])
    assert "Overall:" not in second.stdout  # stdout holds the rows only


def test_output_json_and_md_hold_the_same_rows(two_runs):
    out, _, _ = two_runs
    doc = json.loads((out / "a/bench.json").read_text())
    as_json = json.loads(rows.render("json", [doc]))
    md = rows.render("md", [doc]).splitlines()
    assert [r["test"] for r in as_json] == ["pp16", "tg8", "qps2"] and set(as_json[0]) == set(rows.COLUMNS)
    assert md[0] == "| " + " | ".join(rows.COLUMNS) + " |" and len(md) == 2 + 3


def test_compare_two_runs_prints_spread_and_plots(two_runs, tmp_path):
    out, _, _ = two_runs
    r = cli("compare", out / "a", out / "b/bench.json", "--plot", tmp_path / "c.png")
    a, b = (json.loads((out / x / "bench.json").read_text()) for x in "ab")
    assert f"A: x86/fp32 @ device, {a['run']['started_at']}" in r.stdout and f"— {out / 'b/bench.json'}" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("| prefill, ms"))
    ratio, sigma = compare_runs.ratio(a["prefill_ms"]["mean"], a["prefill_ms"]["std"],
                                      b["prefill_ms"]["mean"], b["prefill_ms"]["std"])
    assert f"{a['prefill_ms']['mean']:.4g} ± {a['prefill_ms']['std']:.2g}" in line and f"{ratio:.3f} ± {sigma:.3f}" in line
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ratio_uncertainty_is_hyperfines():
    r, s = compare_runs.ratio(10.0, 1.0, 20.0, 4.0)
    assert r == 2.0 and s == pytest.approx(2.0 * (0.1 ** 2 + 0.2 ** 2) ** 0.5)
    assert compare_runs.ratio(10.0, None, 20.0, 4.0) == (2.0, None)


def test_compare_bad_inputs_are_one_line(two_runs, tmp_path):
    out, _, _ = two_runs
    (tmp_path / "x.json").write_text("{not json")
    (tmp_path / "fleet.json").write_text(json.dumps({"schema": "litelm-edge-fleet/3"}))
    (tmp_path / "empty").mkdir()
    cases = [((out / "a",), "compare needs two runs or more, got 1"),
             ((out / "a", tmp_path / "x.json"), "x.json: not JSON"),
             ((out / "a", tmp_path / "fleet.json"), "is not a bench result"),
             ((out / "a", tmp_path / "empty"), "no bench.json in this folder"),
             ((out / "a", tmp_path / "nope"), "no such file or folder"),
             ((out / "a", out / "b", "--plot", tmp_path / "c.txt"), "use a .png, .svg or .pdf")]
    for args, want in cases:
        r = cli("compare", *args, check=False)
        assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_compare_names_what_differs(two_runs, tmp_path):
    out, _, _ = two_runs
    other = json.loads((out / "a/bench.json").read_text())
    other["where"], other["protocol"]["prompt_len"] = "emulated", 32
    (tmp_path / "bench.json").write_text(json.dumps(other))
    r = cli("compare", out / "a", tmp_path, "--plot", tmp_path / "c.svg")
    assert "Note: runs measured in different places (device, emulated)" in r.stdout
    assert "Note: protocol differs: prompt_len = 16, 32" in r.stdout
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")


def test_reports_are_readable_like_build_outputs(two_runs, tmp_path):
    out, _, _ = two_runs
    for name in ("bench.json", "bench.md", "bench.html"):
        assert stat.S_IMODE((out / "a" / name).stat().st_mode) == 0o644 & ~_umask(), name
    from litelm_edge.files import atomic_dir
    with atomic_dir(tmp_path / "folder") as d:
        (d / "f").write_text("x")
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755 & ~_umask()


def test_artifact_files_writers_leave_0600_are_readable_too(tmp_path):
    """safetensors' model.safetensors and onnx's decoder.onnx.data come out 0600: atomic_dir gives
    every file inside the folder the build-output mode (an executable keeps its x bits)."""
    from litelm_edge.files import atomic_dir
    with atomic_dir(tmp_path / "folder") as d:
        (d / "sub").mkdir(mode=0o700)
        os.close(os.open(d / "sub" / "w", os.O_CREAT | os.O_WRONLY, 0o600))  # as safetensors writes
        os.close(os.open(d / "x", os.O_CREAT | os.O_WRONLY, 0o700))
    f = tmp_path / "folder"
    mode = {n: stat.S_IMODE((f / n).stat().st_mode) for n in ("sub", "x", "sub/w")}
    assert mode == {"sub": 0o755 & ~_umask(), "x": 0o755 & ~_umask(), "sub/w": 0o644 & ~_umask()}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

