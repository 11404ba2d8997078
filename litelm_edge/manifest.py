"""manifest.json: what an artifact is, how it was built, and every file's sha256 and size.

FORMAT/VERSION name the layout; an artifact of another version is refused with a one-line
"rebuild" instead of being misread. The artifact id is the first 16 hex digits of the sha256 of
the manifest itself (canonical JSON, without the id): it names the whole content (the manifest
lists every file's sha256), it is the id reports print and the artifact's folder on a device.
Version 2: that id (version 1 had two: the files table's hash in reports, the hash of
manifest.json on the device) and no copy of the target's unused [device] table. Version 3 (this
one): the backend's settings, resolved, under manifest[backend section] ("ort", "tvm", "litert"),
where the device runtime reads them (version 2 had LiteRT's at the top level and ORT's graph there).

Every path a runtime, the runner or push opens is built by `artifact_path` from the files table:
a name that is absolute, holds `..`, is not listed, resolves outside the folder (a symlink) or does
not match its sha256 and size is refused (UserError, exit 2) before anything loads it. The graph
names (`graphs.*`, a backend table's `library`) must be names of that table. This file is also
uploaded beside the device runner (devices/bench.runner_files), which loads it by path: the device
checks an artifact with this same code, so it imports nothing of litelm_edge when run alone.

What the unkeyed id does not do: it names content, it does not authenticate it. Whoever can write
the artifact folder can replace a listed graph, rewrite the table and re-seal the id; the checks
here then only keep every opened file inside the folder and equal to what the manifest lists.
Artifacts are not signed (see docs/security.md).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import platform
import os
from pathlib import Path, PurePosixPath

try:  # in the litelm_edge package
    from .config import UserError
    from .files import sha256_file
except ImportError:  # alone beside the device runner (python3 and numpy only)
    class UserError(Exception):  # type: ignore[no-redef]  # the package's, when run alone
        """A bad artifact: the runner prints one line and exits 2."""

    def sha256_file(path: str | Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

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
    for name, meta in m["files"].items():
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
                and type(meta.get("size")) is int and meta["size"] >= 0):
            raise UserError(f"{p}: files entry {name!r} is not {{sha256, size}}: {_rebuild(m)}")
    file_refs(m, p)  # the graph names: listed, inside the folder
    return m


def _bad_name(name: object) -> str | None:
    """Why `name` cannot be a file of an artifact (None: it can): a relative POSIX path inside it."""
    if not isinstance(name, str) or not name or name != name.strip() or "\\" in name or "\0" in name:
        return "is not a plain relative file name"
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute():
        return "is an absolute path"
    if ".." in parts or "." in name.split("/") or "" in name.split("/"):
        return "leaves the artifact folder (..)"
    return None


def file_refs(m: dict, where: str | Path = "manifest") -> dict[str, str]:
    """{'graphs.decoder': 'decoder.onnx', 'tvm.library': 'model.so', ...}: every file the manifest
    names outside its files table (a graph a runtime opens), each checked to be a listed name."""
    refs = {}
    for table, value in m.items():
        if table == "graphs":
            if not isinstance(value, dict):
                raise UserError(f"{where}: 'graphs' is not a table of file names: {_rebuild(m)}")
            refs.update({f"graphs.{k}": v for k, v in value.items()})
        elif isinstance(value, dict) and "library" in value:
            refs[f"{table}.library"] = value["library"]
    for ref, name in refs.items():
        why = _bad_name(name) or (None if name in m["files"] and name != NAME
                                  else "is not listed in its files")
        if why:
            raise UserError(f"{where}: {ref} = {str(name)[:80]!r} {why}: refused (a graph must be a file the "
                            f"manifest lists and hashes); {_rebuild(m)}")
    return refs


_HASHED: dict = {}  # (path, inode, size, mtime_ns) -> sha256: verify() then the runtime's open hash once


def _sha256(p: Path, st: os.stat_result) -> str:
    key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_file(p)
    return _HASHED[key]


def artifact_path(art_dir: str | Path, m: dict, name: str) -> Path:
    """The one way to a file of an artifact: `name` listed in m["files"], inside art_dir (symlinks
    resolved), a regular file whose size and sha256 match its entry. Anything else: UserError."""
    root = Path(art_dir)
    why = _bad_name(name) or (None if name in m.get("files", {}) else "is not listed in its manifest")
    if why:
        raise UserError(f"{root / NAME}: file {str(name)[:80]!r} {why}: refused; {_rebuild(m)}")
    p = root / name
    if not p.is_file():
        raise UserError(f"{p} is missing: the artifact is incomplete; rebuild it")
    real, inside = p.resolve(), root.resolve()
    if inside not in real.parents:
        raise UserError(f"{p} resolves outside the artifact ({real}): refused; {_rebuild(m)}")
    meta, st = m["files"][name], p.stat()
    if st.st_size != meta["size"] or _sha256(p, st) != meta["sha256"]:
        raise UserError(f"{p} does not match its manifest sha256/size: rebuild the artifact "
                        "(or restore the file it was built with)")
    return p


def graph_path(art_dir: str | Path, m: dict, ref: str) -> Path:
    """The verified path of the file a runtime opens, by its manifest key ('graphs.decoder')."""
    name = file_refs(m).get(ref)
    if name is None:
        raise UserError(f"{Path(art_dir) / NAME} names no {ref} (the graph its {m.get('backend')} runtime "
                        f"opens): {_rebuild(m)}")
    return artifact_path(art_dir, m, name)


def verify(art_dir: str | Path, manifest: dict | None = None) -> dict:
    """-> {name: (path, sha256, size)} of every file, each checked against the manifest;
    manifest.json last (its presence on a device means every other file is in place)."""
    root = Path(art_dir)
    m = manifest or read_manifest(root)
    file_refs(m, root / NAME)
    out = {}
    for name, meta in m["files"].items():
        out[name] = (artifact_path(root, m, name), meta["sha256"], meta["size"])
    out[NAME] = (root / NAME, sha256_file(root / NAME), (root / NAME).stat().st_size)
    return out


def verified(art_dir: str | Path) -> dict:
    """The manifest, after every file it lists matched its size and sha256: what bench, eval,
    generate and push call before they use an artifact."""
    m = read_manifest(art_dir)
    verify(art_dir, m)
    return m
