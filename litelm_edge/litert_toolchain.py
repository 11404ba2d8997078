"""The LiteRT converter's own venv: litert-torch cannot share an environment with apache-tvm.

litert-converter pins xdsl 0.28, which needs typing-extensions<4.13; TVM needs a newer one, and pip
either fails or silently backtracks to litert-torch 0.8 with another torch. So the converter lives
in $LITELM_EDGE_CACHE/toolchains/litert-0.10/ (default ~/.cache/litelm-edge), made on first use
(temp folder + rename, so a crash never leaves half a venv) with the same torch as this process,
installed first so pip never resolves one. `tools/setup-litert.sh` makes it ahead of time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import UserError

NAME = "litert-0.10"
PACKAGES = ["litert-torch==0.10.0", "ai-edge-quantizer==0.10.0", "ai-edge-litert==2.3.0", "safetensors>=0.4"]


def cache_root() -> Path:
    return Path(os.environ.get("LITELM_EDGE_CACHE") or Path.home() / ".cache" / "litelm-edge")


def venv_dir() -> Path:
    return cache_root() / "toolchains" / NAME


def python_path(venv: Path | None = None) -> Path:
    return (venv or venv_dir()) / "bin" / "python"


def _torch_pin() -> str:
    import torch
    return "torch==" + torch.__version__.split("+")[0]


def _pip(py: Path, args: list[str], log) -> None:
    cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log("litert toolchain: pip install " + " ".join(args))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])
        raise UserError(f"cannot make the LiteRT toolchain venv ({tail}): check PyPI access, "
                        "or run tools/setup-litert.sh")


def ensure(log=lambda m: None) -> Path:
    """Python of the toolchain venv, made if missing. Raises UserError when it cannot be made."""
    final = venv_dir()
    if python_path(final).is_file():
        return python_path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.tmp-", dir=final.parent))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True)
        torch_pin = _torch_pin()
        _pip(python_path(tmp), [torch_pin], log)  # first, so the next step never resolves a torch
        _pip(python_path(tmp), [*PACKAGES, torch_pin], log)
        check = subprocess.run([str(python_path(tmp)), "-c", "import torch, litert_torch, "
                                "ai_edge_quantizer; print(torch.__version__)"], capture_output=True, text=True)
        if check.returncode or not check.stdout.startswith(torch_pin.split("==")[1]):
            raise UserError(f"LiteRT toolchain venv is broken (torch {check.stdout.strip() or '?'}, "
                            f"want {torch_pin}): remove {tmp.parent} and retry")
        os.replace(tmp, final)  # venvs run from a renamed folder: we only ever call bin/python -m
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return python_path(final)
