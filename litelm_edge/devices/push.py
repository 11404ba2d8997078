"""Push an artifact to a device: content-addressed, verified, atomic, and skipping what is there.

Layout on the device: ${XDG_CACHE_HOME:-~/.cache}/litelm-edge/artifacts/<id>/ where <id> is the
manifest's artifact id (manifest.py: the hash of the manifest, which lists the sha256 of every
other file), so the id names the content and is the one the reports print. Each file is uploaded to a hidden temporary name, its sha256 is checked
on the device, then it is renamed into place (manifest.json last): a half-written file is never
under its final name. Files already present with the right hash are not sent again.
"""
from __future__ import annotations

import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .. import manifest as mf
from ..config import UserError
from ..files import is_disk_full
from .remote import Remote, RemoteError

STEP_TIMEOUT = 60.0  # s, for each small remote command (mkdir, sha256sum, df)
IO_TIMEOUT = 60.0  # s without progress before an upload is declared stalled
PART = ".litelm-part"  # suffix of temporary uploads; stale ones are removed by the next push


@dataclass
class PushResult:
    remote_dir: str
    sent: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_sent: int = 0  # file data uploaded, bytes
    seconds: float = 0.0


def local_files(artifact_dir: str | Path) -> dict[str, tuple[Path, str, int]]:
    """name -> (local path, sha256, size), checked against the manifest; manifest.json last."""
    return mf.verify(artifact_dir)


# One round trip before any upload: make the folders, drop stale parts, report the folder, its
# free space and the sha256 of the files already there. $1: root or "", $2: folder under root.
_PREPARE = r"""set -e
root=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/litelm-edge}; dir=$root/$2; shift 2
for f; do mkdir -p -- "$(dirname -- "$dir/$f")"; done
find "$dir" -name '*%s' -type f -delete
printf 'dir %%s\n' "$dir"
(set -- $(df -Pk "$dir" | tail -n 1); printf 'free %%s\n' "$4")  # no awk: minimal Debian lacks it
cd "$dir"; for f; do if [ -f "$f" ]; then sha256sum -- "$f"; fi; done""" % PART  # noqa: UP031 - a shell script: its own %s and {} would clash with f-string or .format braces


def prepare(remote: Remote, root: str | None, sub: str, names: list[str]):
    """-> (device folder root/sub, free bytes there, {name: sha256} of files already present)."""
    out = remote.run(["sh", "-c", _PREPARE, "sh", root or "", sub, *names], STEP_TIMEOUT)
    lines = out.stdout.splitlines()
    folder, free = lines[0][4:], int(lines[1].split()[1]) * 1024  # df -k: KiB
    return folder, free, {line[66:]: line[:64] for line in lines[2:] if len(line) > 66}


def free_bytes(remote: Remote, folder: str) -> int:
    out = remote.run(["df", "-Pk", folder], STEP_TIMEOUT).stdout.splitlines()
    return int(out[-1].split()[3]) * 1024


def _disk_full(remote: Remote, folder: str, need: int, free: int) -> RemoteError:
    return RemoteError(f"{remote.label}: disk full writing {folder}: need {need / 1e6:.2f} MB, "
                       f"{free / 1e6:.2f} MB free: free space on the device and push again")


def upload(remote: Remote, local: Path, tmp: str, progress=None) -> int:
    """Upload one file to its temporary name on the device. Returns bytes sent."""
    size, sent = local.stat().st_size, 0

    def cb(done, total):
        nonlocal sent
        sent = done
        if progress:
            progress(local.name, done, total)

    try:
        remote.sftp.get_channel().settimeout(IO_TIMEOUT)
        remote.sftp.put(str(local), tmp, callback=cb, confirm=True)
        return sent
    except (OSError, EOFError) as e:
        raise RemoteError(f"{remote.label}: upload of {local.name} failed after {sent} of {size} "
                          f"bytes ({str(e) or 'connection closed'}): check the device and push again; "
                          "the partial file is never used") from e


# After all uploads, one round trip: check each temporary file's sha256, then rename it to its
# final name, in order ($1: folder, then tmp final sha256 triples). A mismatch stops everything.
_FINALIZE = r"""set -e
cd "$1"; shift
while [ $# -ge 3 ]; do
    got=$(sha256sum -- "$1" | cut -c1-64)
    if [ "$got" != "$3" ]; then echo "$2 arrived corrupted (sha256 mismatch)" >&2; exit 5; fi
    mv -f -- "$1" "$2"
    shift 3
done"""


def _discard(remote: Remote, folder: str, tmps: list[str]):
    if remote.alive() and tmps:
        try:
            remote.run(["sh", "-c", 'cd "$1" && shift && rm -f -- "$@"', "sh", folder, *tmps],
                       STEP_TIMEOUT, check=False)
        except (UserError, OSError, EOFError):
            pass  # best effort: the next push removes stale parts too


def sync(remote: Remote, sub: str, files: dict, root: str | None = None, progress=None
         ) -> PushResult:
    """Make files {name: (local path, sha256, size)} present and verified in root/sub.

    Uploads go to temporary names; then each is checked and renamed, in dict order.
    root: device folder (default: the device user's litelm-edge cache).
    """
    t0 = time.perf_counter()
    if root is not None and not root.startswith("/"):
        raise UserError(f"--remote-dir '{root}' must be an absolute path on the device")
    folder, free, have = prepare(remote, root, sub, list(files))
    todo = [n for n, (_, sha, _) in files.items() if have.get(n) != sha]
    need = sum(files[n][2] for n in todo)
    if need > free:
        raise _disk_full(remote, folder, need, free)
    result = PushResult(folder, skipped=[n for n in files if n not in todo])
    tag = uuid.uuid4().hex[:8]
    tmps = {n: str(PurePosixPath(n).parent / f".{PurePosixPath(n).name}.{tag}{PART}") for n in todo}
    try:
        for name in todo:
            result.bytes_sent += upload(remote, files[name][0], f"{folder}/{tmps[name]}", progress)
        triples = [x for n in todo for x in (tmps[n], n, files[n][1])]
        done = remote.run(["sh", "-c", _FINALIZE, "sh", folder, *triples], STEP_TIMEOUT,
                          check=False) if todo else None
        if done and done.rc:
            raise RemoteError(f"{remote.label}: {done.stderr.strip().splitlines()[-1]}: push again")
    except BaseException as e:
        _discard(remote, folder, list(tmps.values()))
        if isinstance(e, RemoteError) and remote.alive():  # an upload failed: was it space?
            try:
                free = free_bytes(remote, folder)  # with this push's partial files removed
            except RemoteError:
                raise e from None  # the connection is gone too: the upload error says it
            if free < need or is_disk_full(e):  # short of space now, or the device said ENOSPC
                raise _disk_full(remote, folder, need, free) from e
        raise
    result.sent, result.seconds = todo, time.perf_counter() - t0
    return result


def push(remote: Remote, artifact_dir: str | Path, progress=None, root: str | None = None
         ) -> PushResult:
    """Make the artifact present and verified on the device; send only what is missing.

    manifest.json goes last: its presence means every other file is in place.
    """
    m = mf.read_manifest(artifact_dir)
    return sync(remote, f"artifacts/{m['artifact_id']}", mf.verify(artifact_dir, m), root, progress)


def push_to(address: str, artifact_dir, accept_new: bool = False, root: str | None = None,
            progress=None) -> tuple[str, PushResult]:
    """Open the device, push, close: (device label, what was sent)."""
    local_files(artifact_dir)  # every file against the manifest, before any connection
    with Remote(address, accept_new) as remote:
        return remote.label, push(remote, artifact_dir, progress, root)


def bar():
    """A progress callback for push: a bar on stderr for each file of 1 MB or more (a line per
    10 % when stderr is not a terminal: reports/progress.py)."""
    from ..reports.progress import bar as progress

    bars = {}

    def update(name, done, total):
        if total < 1 << 20:
            return
        b = bars.get(name) or bars.setdefault(name, progress(total, name, "B", unit_scale=True, leave=False))
        b.update(done - b.n)
        if done >= total:
            b.close()

    return update


def fetch(remote: Remote, remote_path: str, local_path: str | Path) -> Path:
    """Copy one file back; the local file appears complete or not at all."""
    local_path = Path(local_path)
    tmp = local_path.with_name(local_path.name + PART)
    try:
        remote.sftp.get_channel().settimeout(IO_TIMEOUT)
        remote.sftp.get(remote_path, str(tmp))
    except (OSError, EOFError) as e:
        tmp.unlink(missing_ok=True)
        raise RemoteError(f"{remote.label}: cannot fetch {shlex.quote(remote_path)} ({e}): "
                          "check the device and retry") from e
    return tmp.replace(local_path)
