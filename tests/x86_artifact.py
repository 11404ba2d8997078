"""The tiny x86 artifact (fp32: too small for int8 to shrink it), built once per test session from conftest's trained `tiny_run`."""
from __future__ import annotations

from pathlib import Path

_BUILT: dict[str, Path] = {}  # shared by every test module that asks


def x86_artifact(tiny_run, data_dir, tmp_path_factory) -> Path:
    if "x86" not in _BUILT:
        from litelm_edge.export import build

        out = tmp_path_factory.mktemp("x86-art") / "x86-fp32"
        build(tiny_run, "x86", out, "fp32", data_dir, log=lambda m: None)
        _BUILT["x86"] = out
    return _BUILT["x86"]
