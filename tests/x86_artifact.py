"""The tiny x86 fp32 artifact (too small for int8 to shrink it), built once per test session from
conftest's trained `tiny_run`: the same folder as conftest's `x86_fp32` fixture (read-only)."""
from __future__ import annotations

from pathlib import Path

from conftest import build_cached


def x86_artifact(tiny_run, data_dir, tmp_path_factory) -> Path:
    return build_cached(tmp_path_factory, tiny_run, "x86", "fp32", data_dir)
