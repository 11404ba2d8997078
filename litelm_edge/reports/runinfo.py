"""When, by what and where a result was made: the `run` record of bench.json, fleet.json and summary.json.

With it results can be followed over time (llama-bench puts build and hardware columns on every
row): `started_at` (ISO 8601, UTC), the tool's version and the git commit of the checkout it ran
from (null for an installed wheel), and the host that ran litelm-edge (for a remote bench the
device's own facts, its host name included, are in the result's `device`).
"""
from __future__ import annotations

import datetime as dt
import socket
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]  # the checkout holding litelm_edge/, when run from one


def now() -> str:
    """The current time, ISO 8601 in UTC with a Z: '2026-12-06T02:31:07Z'."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def version() -> str:
    from importlib import metadata
    try:
        return metadata.version("litelm-edge")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        from .. import __version__
        return __version__


def commit(source: Path = SOURCE) -> str | None:
    """The checkout's commit, with '-dirty' when tracked files changed; None outside a git checkout
    (an installed wheel: its version is the build's identity) or without git."""
    if not (source / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def record(started_at: str) -> dict:
    """The `run` object every result document carries."""
    return {"started_at": started_at, "finished_at": now(), "tool": "litelm-edge", "version": version(),
            "commit": commit(), "host": socket.gethostname()}
