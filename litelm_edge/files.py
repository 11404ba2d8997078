"""File helpers: atomic folder and file writes, sha256 of a file.

Every write of a user-visible file goes through here, so a crash never leaves half a file (or
half a folder) under its final name. Temporaries carry the writer's PID; the next write beside
them removes those of writers that died (kill -9, power loss). A write that fills the disk, whatever
library was writing (safetensors, torch.save, onnx, numpy), ends as one line: `disk full writing
<final path>` (UserError, exit 2), with the temporary removed and the old file or folder in place.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .config import UserError

_RUN_START = time.time()  # PID-less temporaries older than this are stale
_STALE = re.compile(r"^\..+\.(?:tmp-(?P<pid>\d+)-[a-z0-9_]+|old-(?P<old>\d+)|tmp-(?P<legacy>[a-z0-9_]{8}))$")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    """The process umask, read without setting it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable(path: Path, folder: bool = False) -> None:
    """Give a temporary (mkstemp: 0600, mkdtemp: 0700) the mode of any build output: 0644 for a
    file, 0755 for a folder, less what the umask takes away, so reports and artifacts can be read
    by others like what a compiler or `cp` writes."""
    os.chmod(path, (0o755 if folder else 0o644) & ~_umask())


def readable_tree(root: Path) -> None:
    """readable() for everything inside `root`: writers that make their own files (safetensors,
    onnx external data) leave them 0600; an executable keeps its x bits (0755)."""
    for d, dirs, files in os.walk(root):
        for name in dirs:
            readable(Path(d) / name, folder=True)
        for name in files:
            p = Path(d) / name
            if not p.is_symlink():
                readable(p, folder=bool(p.stat().st_mode & 0o100))


LOW_SPACE = 1 << 20  # bytes: below this, a failed write is taken for a full disk
# What the writers say on ENOSPC when they do not raise an OSError: safetensors' Rust IoError; torch.save's
# zip writer says "file write failed" or "unexpected pos N vs M" (no errno): there the free space decides.
FULL_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded")


def is_disk_full(error: BaseException, where: Path | None = None) -> bool:
    """Whether the failed write `error` (or what caused it) ran out of space (ENOSPC, EDQUOT)."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(t in str(e) for t in FULL_TEXT):
            return True
        if where is not None and isinstance(e, (OSError, RuntimeError)) and free_bytes(where) < LOW_SPACE:
            return True
        e = e.__cause__ or e.__context__
    return False


def free_bytes(where: Path) -> int:
    try:
        return shutil.disk_usage(where).free
    except OSError:
        return LOW_SPACE


class DiskFull(UserError):
    """`disk full writing <path>`: an enclosing atomic write renames it to its own final path."""


def disk_full(path: str | Path) -> DiskFull:
    return DiskFull(f"disk full writing {path}: free space there and retry (nothing was replaced)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def clean_stale(parent: Path) -> None:
    """Remove the temporaries of killed writers beside a write: `.NAME.tmp-PID-*` and
    `.NAME.old-PID` whose PID is dead, and `.NAME.tmp-XXXXXXXX` (made before names carried a
    PID) older than this run. Nothing else is touched."""
    for p in Path(parent).glob(".*.*-*"):
        m = _STALE.match(p.name)
        if not m:
            continue
        pid = m.group("pid") or m.group("old")
        try:
            if pid:
                stale = int(pid) != os.getpid() and not _alive(int(pid))
            else:
                stale = p.stat().st_mtime < _RUN_START
        except OSError:
            continue
        if stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `final` to fill; on success it replaces `final`, on any error
    it is removed and `final` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as e:
        raise (disk_full(final) if is_disk_full(e) else e) from e
    readable(tmp, folder=True)
    try:
        yield tmp
        readable_tree(tmp)
        commit_dir(tmp, final)
    except BaseException as e:
        # before the space is freed; a UserError counts by its text (a toolchain's stderr tail)
        full = isinstance(e, DiskFull) or is_disk_full(e, None if isinstance(e, UserError) else tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise disk_full(final) from e
        raise


def commit_dir(tmp: Path, final: Path) -> None:
    """Replace `final` by `tmp`; the old folder is moved aside first and removed last."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: Path, data: bytes | str) -> None:
    path = Path(path)
    clean_stale(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
        os.fchmod(fd, 0o644 & ~_umask())  # as readable(): 0644 like any build output, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise (disk_full(path) if is_disk_full(e) else e) from e
