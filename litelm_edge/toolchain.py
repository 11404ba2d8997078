"""Toolchain venvs: a backend whose compiler cannot share the main environment gets its own.

    ~/.cache/litelm-edge/toolchains/<name>/   (or $LITELM_EDGE_CACHE/toolchains/<name>/)

Created on first use with torch==2.13.0 installed first (pip never resolves torch: a bare `torch`
would pull a multi-GB CUDA build; from $LITELM_EDGE_TORCH_INDEX when set), then the backend's pinned
packages. Creation goes to a temporary folder renamed into place, so a crash never leaves a half-made
venv that looks whole.
The backend's converter runs in it as a subprocess with the litelm_edge sources on PYTHONPATH.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .config import UserError, cache_dir


def torch_pin() -> str:
    """The torch of this process, pinned: the venv gets the same CPU build, never a resolved one."""
    try:
        import torch
        return "torch==" + torch.__version__.split("+")[0]
    except ImportError:
        return "torch==2.13.0"


def torch_index() -> list[str]:
    """pip's --index-url for the torch pin when $LITELM_EDGE_TORCH_INDEX names one: the workflow sets
    torch's CPU wheel index on GitHub's runners, where a plain torch==X resolves the CUDA build
    (cudnn, nccl, triton: GBs). Unset on machines whose pip already finds the CPU wheel."""
    index = os.environ.get("LITELM_EDGE_TORCH_INDEX")
    return ["--index-url", index] if index else []


def _pip(python: Path, args: list[str], log: Callable[[str], None]) -> None:
    cmd = [str(python), "-m", "pip", "install", "--quiet", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        raise UserError(f"toolchain set-up failed at `pip install {' '.join(args)}` ({tail[0]}); "
                        "check network access to PyPI and retry")
    log(f"installed {' '.join(args)}")


def _check(python: Path, imports: tuple[str, ...], pin: str) -> None:
    code = f"import {', '.join(('torch', *imports))}; print(torch.__version__)"
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if r.returncode or not r.stdout.startswith(pin.split("==")[1]):
        raise UserError(f"toolchain venv is broken (torch {r.stdout.strip() or '?'}, want {pin}; "
                        f"{(r.stderr.strip().splitlines() or [''])[-1]}): check PyPI access and retry")


def ensure(name: str, packages: list[str], log: Callable[[str], None] = lambda msg: None,
           imports: tuple[str, ...] = ()) -> Path:
    """The python of toolchain venv `name`, created (atomically) when missing; `imports` must
    import there afterwards, with torch still the pinned version."""
    root = cache_dir() / "toolchains"
    final = root / name
    python = final / "bin" / "python"
    if python.is_file():
        return python
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        log(f"creating toolchain venv {final} (once; a few minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True)
        pin = torch_pin()
        # first, so the next step never resolves a torch
        _pip(tmp / "bin" / "python", [pin, *torch_index()], log)
        _pip(tmp / "bin" / "python", [*packages, pin], log)
        _check(tmp / "bin" / "python", imports, pin)
        try:
            os.replace(tmp, final)
        except OSError:  # another process made it first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return python


def src_env(src: str | None = None) -> dict:
    """The environment with the litelm_edge sources first on PYTHONPATH."""
    src = src or str(Path(__file__).resolve().parent.parent)
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))


def run(python: Path, module: str, args: list[str], log: Callable[[str], None] = lambda msg: None) -> None:
    """Run `python -m module args` with litelm_edge importable; a failure is one UserError line."""
    r = subprocess.run([str(python), "-m", module, *args], env=src_env(), capture_output=True, text=True)
    if r.returncode < 0:  # a crash has no Python error to show: its last line would be a warning
        log(r.stderr[-4000:])
        raise UserError(f"{module} was killed by {signal.Signals(-r.returncode).name} (no Python error): "
                        "run it again; if it persists, report it with the log above")
    if r.returncode:
        # TVM logs "[hh:mm:ss] file:line: Warning: ..." lines after the error itself: not the last line
        lines = ([ln for ln in r.stderr.strip().splitlines() if ln.strip() and "Warning:" not in ln]
                 or ["(no output)"])
        log(r.stderr[-4000:])
        raise UserError(f"{module} failed: {lines[-1].strip()}")
