"""manifest.py: one artifact id, old format versions and edited manifests refused with a rebuild line."""
from __future__ import annotations

import json

import pytest

from fake_artifact import make_artifact
from litelm_edge import manifest as mf
from litelm_edge.config import UserError


def test_the_id_names_the_manifest_content(tmp_path):
    art = make_artifact(tmp_path / "a", {"decoder.onnx": 5000})
    m = mf.read_manifest(art)
    assert m["version"] == mf.VERSION and m["artifact_id"] == mf.artifact_id(m) and len(m["artifact_id"]) == 16
    other = make_artifact(tmp_path / "b", {"decoder.onnx": 5000}, seed=1)  # other bytes, other id
    assert mf.read_manifest(other)["artifact_id"] != m["artifact_id"]
    assert set(mf.verify(art)) == {"decoder.onnx", "manifest.json"}


def test_an_old_version_is_refused_with_the_rebuild_command(tmp_path):
    art = make_artifact(tmp_path / "a", {"decoder.onnx": 100})
    m = json.loads((art / "manifest.json").read_text())
    m.update(version=1, checkpoint="runs/q/run")
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"format version 1, this litelm-edge reads version 3: rebuild with "
                                        r"`litelm-edge build --target x86 --checkpoint runs/q/run --out DIR`$"):
        mf.read_manifest(art)


def test_an_edited_manifest_is_refused(tmp_path):
    art = make_artifact(tmp_path / "a", {"decoder.onnx": 100})
    m = json.loads((art / "manifest.json").read_text())
    m["precision"] = "fp32"
    (art / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="does not match its artifact id .*rebuild with"):
        mf.read_manifest(art)


def test_a_changed_file_is_refused(tmp_path):
    art = make_artifact(tmp_path / "a", {"decoder.onnx": 100})
    (art / "decoder.onnx").write_bytes(b"x" * 100)
    with pytest.raises(UserError, match="decoder.onnx does not match its manifest sha256/size: rebuild"):
        mf.verify(art)
