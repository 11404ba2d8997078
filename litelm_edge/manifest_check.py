"""An artifact checked against its manifest before any use: format, version, every file's sha256.

bench, eval, generate and push all start here, so a swapped tokenizer.json or model file is refused
on this machine as it is on a device (push checks the sha256 there again after the upload).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from .config import UserError

FORMAT, VERSION = "litelm-edge-artifact", 1


def verify_artifact(art_dir) -> dict:
    """-> the manifest, after every file it lists matched its size and sha256."""
    from .bench import read_manifest
    from .checkpoint import sha256_file
    root = Path(art_dir)
    m = read_manifest(root)
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise UserError(f"{root / 'manifest.json'}: format {m.get('format')!r} version {m.get('version')!r}, "
                        f"this litelm-edge reads {FORMAT} version {VERSION}: rebuild the artifact")
    for name, meta in m["files"].items():
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts:
            raise UserError(f"manifest file name '{name}' leaves the artifact: rebuild the artifact")
        p = root / name
        if not isinstance(meta, dict) or not p.is_file():
            raise UserError(f"{p} is missing: the artifact is incomplete; rebuild it")
        if p.stat().st_size != meta.get("size") or sha256_file(p) != meta.get("sha256"):
            raise UserError(f"{p} does not match its manifest sha256/size (changed after the build): "
                            "restore the file or rebuild the artifact")
    return m
