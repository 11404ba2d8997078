"""A minimal artifact folder for transport tests: a manifest.json and a few random files."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from litelm_edge import manifest as mf


def make_artifact(root: Path, sizes: dict[str, int], target: str = "x86", seed: int = 0) -> Path:
    """Files of the given sizes (bytes) with distinct content, and a manifest listing them."""
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, (name, size) in enumerate(sizes.items()):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        block = hashlib.sha256(f"{seed}:{i}".encode()).digest()
        p.write_bytes((block * (size // 32 + 1))[:size] if size < 4096 else os.urandom(size))
        files[name] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": size}
    manifest = {"format": mf.FORMAT, "version": mf.VERSION, "target": target,
                "backend": "ort", "runtime": "onnxruntime", "precision": "int8", "files": files}
    mf.write(root, manifest)
    return root
