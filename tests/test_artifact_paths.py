"""Issue 23: nothing runs that was not verified. Every file a runtime, the runner or push opens is a
name of the manifest's files table, inside the artifact folder, with its sha256 and size; the
attacks of the issue (a graph at ../evil/decoder.onnx, at an absolute path, an unlisted other.onnx,
a symlink out, a swapped graph, an edited manifest, each re-sealed with the unkeyed id) are refused
with exit 2 and one line before anything loads: on the host (eval, generate, bench, push) and on the
device (the uploaded runner, run as a script beside its uploaded manifest.py)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli
from litelm_edge import manifest as mf
from litelm_edge.config import UserError

ATTACKS = ["dotdot", "absolute", "unlisted", "symlink", "swapped", "edited", "library", "files-entry"]
WHY = {"dotdot": "leaves the artifact folder", "absolute": "is an absolute path", "unlisted": "is not listed",
       "symlink": "resolves outside the artifact", "swapped": "does not match its manifest sha256",
       "edited": "does not match its artifact id", "library": "leaves the artifact folder",
       "files-entry": "leaves the artifact folder"}


def attacked(src: Path, tmp: Path, kind: str) -> Path:
    """A copy of artifact `src` under tmp/art with one attack applied (and re-sealed, as an attacker
    with write access re-seals in one line), and a foreign graph at tmp/evil/."""
    art, evil = tmp / "art", tmp / "evil"
    shutil.copytree(src, art)
    m = json.loads((art / mf.NAME).read_text())
    graph = m["graphs"]["decoder"]
    evil.mkdir()
    shutil.copy(art / graph, evil / graph)  # same bytes: only the path check can tell
    if kind == "dotdot":
        m["graphs"]["decoder"] = f"../evil/{graph}"
    elif kind == "absolute":
        m["graphs"]["decoder"] = str(evil / graph)
    elif kind == "unlisted":
        shutil.copy(art / graph, art / "other.onnx")
        m["graphs"]["decoder"] = "other.onnx"
    elif kind == "symlink":
        (art / graph).unlink()
        (art / graph).symlink_to(evil / graph)
    elif kind == "swapped":
        with open(art / graph, "ab") as f:
            f.write(b"\0")
    elif kind == "library":
        m["tvm"] = {"library": "../evil/model.so"}
    elif kind == "files-entry":
        m["files"][f"../evil/{graph}"] = m["files"][graph]
    if kind == "edited":  # not re-sealed: the id says so
        m["graphs"]["decoder"] = f"../evil/{graph}"
        (art / mf.NAME).write_text(json.dumps(m))
    elif kind not in ("symlink", "swapped"):
        mf.write(art, {k: v for k, v in m.items() if k != "artifact_id"})
    return art


def refused(r, kind):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and WHY[kind] in lines[0], r.stderr[-2000:]


@pytest.mark.parametrize("kind", ATTACKS)
def test_every_attack_is_refused_by_the_manifest_checks(x86_fp32, tmp_path, kind):
    art = attacked(x86_fp32, tmp_path, kind)
    with pytest.raises(UserError, match=WHY[kind]):
        mf.verified(art)
    from litelm_edge.devices.push import local_files
    with pytest.raises(UserError, match=WHY[kind]):
        local_files(art)  # push: before any connection


def test_the_runtime_opens_only_the_verified_path(x86_fp32, tmp_path):
    """open_runtime asks manifest.graph_path, even when a caller skipped verified()."""
    from litelm_edge.devices.runner import open_runtime
    for kind in ("dotdot", "absolute", "unlisted", "symlink"):
        art = attacked(x86_fp32, tmp_path / kind, kind)
        m = json.loads((art / mf.NAME).read_text())
        with pytest.raises(UserError, match=WHY[kind]):
            open_runtime(art, m, 1)
    m = mf.verified(x86_fp32)
    assert mf.graph_path(x86_fp32, m, "graphs.decoder") == x86_fp32 / m["graphs"]["decoder"]
    with pytest.raises(UserError, match="names no tvm.library"):
        mf.graph_path(x86_fp32, m, "tvm.library")


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "unlisted", "edited"])
def test_eval_generate_and_bench_refuse_before_loading(x86_fp32, data_dir, tmp_path, kind):
    art = attacked(x86_fp32, tmp_path, kind)
    refused(cli("eval", "--artifact", art, "--data", data_dir, check=False), kind)
    refused(cli("generate", "--artifact", art, "--max-new-tokens", "2", check=False), kind)
    refused(cli("bench", art, "--reps", "1", "--warmup", "0", "--gen-len", "2", "--prompt-len", "4",
                check=False), kind)


def device_runner(tmp: Path) -> Path:
    """The runner's upload, as a device holds it: runner/<hash>/{devices/runner.py, devices/facts.py,
    manifest.py, backends/ort/runtime.py}, no litelm_edge package on its path."""
    from litelm_edge.devices.bench import runner_files
    root = tmp / "runner"
    for name, src in runner_files("ort").items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / name)
    assert (root / "manifest.py").is_file()
    return root / "devices" / "runner.py"


@pytest.mark.parametrize("kind", ATTACKS)
def test_the_device_runner_refuses_every_attack(x86_fp32, tmp_path, kind):
    art = attacked(x86_fp32, tmp_path, kind)
    runner = device_runner(tmp_path)
    r = subprocess.run([sys.executable, "-E", "-s", str(runner), str(art), "--out", str(tmp_path / "r.json"),
                        "--reps", "1", "--warmup", "0", "--prompt-len", "4", "--gen-len", "2"],
                       capture_output=True, text=True, cwd=tmp_path)
    refused(r, kind)
    assert not (tmp_path / "r.json").exists()


def test_a_listed_resealed_graph_is_what_the_unkeyed_id_cannot_stop(x86_fp32, tmp_path):
    """The honest limit (docs/security.md): a writer of the folder who lists and hashes another graph
    inside it and re-seals is accepted: the id names content, it does not authenticate it."""
    art = attacked(x86_fp32, tmp_path, "unlisted")
    m = json.loads((art / mf.NAME).read_text())
    m["files"]["other.onnx"] = dict(m["files"][json.loads((x86_fp32 / mf.NAME).read_text())["graphs"]["decoder"]])
    mf.write(art, {k: v for k, v in m.items() if k != "artifact_id"})
    assert mf.graph_path(art, mf.verified(art), "graphs.decoder") == art / "other.onnx"
