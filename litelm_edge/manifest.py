"""manifest.json: what an artifact is, how it was built, and every file's sha256 and size.

FORMAT/VERSION name the layout; an artifact of another version is refused with a one-line
"rebuild" instead of being misread. The artifact id is the first 16 hex digits of the sha256 of
the manifest itself (canonical JSON, without the id): it names the whole content (the manifest
lists every file's sha256), it is the id reports print and the artifact's folder on a device.
Version 2: that id (version 1 had two: the files table's hash in reports, the hash of
manifest.json on the device) and no copy of the target's unused [device] table. Version 3 (this
one): the backend's settings, resolved, under manifest[backend section] ("ort", "tvm", "litert"),
where the device runtime reads them (version 2 had LiteRT's at the top level and ORT's graph there).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import platform
from pathlib import Path, PurePosixPath

from .config import UserError
from .files import sha256_file

FORMAT, VERSION = "litelm-edge-artifact", 3
NAME = "manifest.json"


def artifact_id(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "artifact_id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def seal(manifest: dict) -> dict:
    """The manifest as JSON reads it back, with its artifact id set."""
    m = json.loads(json.dumps(manifest))  # tuples -> lists: the id hashes what a reader sees
    m["artifact_id"] = artifact_id(m)
    return m


def write(art_dir: Path, manifest: dict) -> dict:
    m = seal(manifest)
    (Path(art_dir) / NAME).write_text(json.dumps(m, indent=1))
    return m


def files_table(d: Path) -> dict:
    return {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(Path(d).iterdir()) if p.is_file() and p.name != NAME}


def tool_versions(*mods: str) -> dict:
    out = {"python": platform.python_version()}
    for m in ("litelm_edge", "torch", "numpy") + mods:
        try:
            out[m] = getattr(importlib.import_module(m), "__version__", "unknown")
        except ImportError:
            out[m] = "not installed"
    return out


def _rebuild(m: dict) -> str:
    return (f"rebuild with `litelm-edge build --target {m.get('target') or 'TARGET'} "
            f"--checkpoint {m.get('checkpoint') or 'CHECKPOINT'} --out DIR`")


def read_manifest(art_dir: str | Path) -> dict:
    """The manifest of a built artifact, refused (one line) when it is not this format's version
    or its artifact id does not match its content."""
    p = Path(art_dir) / NAME
    if not p.is_file():
        raise UserError(f"'{art_dir}' is not a built artifact (no manifest.json): "
                        "pass a folder made by `litelm-edge build`")
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: corrupt manifest ({e}); rebuild the artifact") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise UserError(f"{p}: not a litelm-edge artifact manifest: rebuild the artifact")
    if m.get("version") != VERSION:
        raise UserError(f"{p}: artifact format version {m.get('version')}, this litelm-edge reads "
                        f"version {VERSION}: {_rebuild(m)}")
    if m.get("artifact_id") != artifact_id(m):
        raise UserError(f"{p}: the manifest does not match its artifact id (edited or corrupt): "
                        f"{_rebuild(m)}")
    return m


def verify(art_dir: str | Path, manifest: dict | None = None) -> dict:
    """-> {name: (path, sha256, size)} of every file, each checked against the manifest;
    manifest.json last (its presence on a device means every other file is in place)."""
    root = Path(art_dir)
    m = manifest or read_manifest(root)
    out = {}
    for name, meta in m["files"].items():
        p = root / name
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise UserError(f"manifest file name '{name}' leaves the artifact: rebuild the artifact")
        if not p.is_file():
            raise UserError(f"{p} is missing: the artifact is incomplete; rebuild it")
        if p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
            raise UserError(f"{p} does not match its manifest sha256/size: rebuild the artifact "
                            "(or restore the file it was built with)")
        out[name] = (p, meta["sha256"], meta["size"])
    out[NAME] = (root / NAME, sha256_file(root / NAME), (root / NAME).stat().st_size)
    return out


def verified(art_dir: str | Path) -> dict:
    """The manifest, after every file it lists matched its size and sha256: what bench, eval,
    generate and push call before they use an artifact."""
    m = read_manifest(art_dir)
    verify(art_dir, m)
    return m
