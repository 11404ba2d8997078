"""Run the CLI with an injected full disk: the Nth write under a folder fails with ENOSPC.

    python tests/enospc.py N UNDER COUNT_FILE litelm-edge-args...

A "write" is each opening of a file for writing under UNDER (builtins/io.open, os.open: tempfile's
mkstemp), and each call of the writers that bypass Python's files (safetensors' save_file, torch.save,
onnx's save_model, numpy's tofile) on a path or file there. N = 0 injects nothing; the number of
writes seen is written to COUNT_FILE at exit, so a test counts the writes first, then fails each.
"""
from __future__ import annotations

import atexit
import builtins
import errno
import io
import os
import sys

N, UNDER, COUNT_FILE = int(sys.argv[1]), os.path.realpath(sys.argv[2]), sys.argv[3]
seen = 0
_open, _os_open = builtins.open, os.open


def hit(path):
    """Count a write to `path` (a path, or a file object) under UNDER; the Nth raises ENOSPC."""
    global seen
    # a path as given, or an open file's name; not Path.name, which is only the last component
    p = path if isinstance(path, (str, bytes, os.PathLike)) else getattr(path, "name", None)
    if not isinstance(p, (str, bytes, os.PathLike)) or not os.path.realpath(os.fsdecode(p)).startswith(UNDER):
        return
    seen += 1
    if seen == N:
        raise OSError(errno.ENOSPC, "No space left on device (injected)", os.fsdecode(p))


def fake_open(file, mode="r", *a, **kw):
    if any(c in mode for c in "wax+"):
        hit(file)
    return _open(file, mode, *a, **kw)


def fake_os_open(path, flags, *a, **kw):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        hit(path)
    return _os_open(path, flags, *a, **kw)


def wrap(mod, name, arg=1):
    """mod.name(...) counts its `arg`-th argument (1-based) as a write first."""
    real = getattr(mod, name)

    def f(*a, **kw):
        hit(a[arg - 1] if len(a) >= arg else next(iter(kw.values()), None))
        return real(*a, **kw)
    setattr(mod, name, f)


builtins.open = io.open = fake_open
os.open = fake_os_open
for modname, name, arg in (("safetensors.torch", "save_file", 2), ("torch", "save", 2),
                           ("onnx", "save_model", 2)):
    try:
        mod = __import__(modname, fromlist=[name])
        wrap(mod, name, arg)
        if modname == "onnx":
            mod.save = mod.save_model
    except ImportError:
        pass
try:  # the token files are written by numpy's tofile through their descriptors: count each block
    import litelm_edge.pipeline.data_tokens as dt
    _write = dt.TokenWriter._write

    def counted_write(self, split, ids):
        hit(self.files[split])
        return _write(self, split, ids)
    dt.TokenWriter._write = counted_write
except (ImportError, AttributeError):
    pass


@atexit.register
def _count():
    with _open(COUNT_FILE, "w") as f:
        f.write(str(seen))


sys.argv = ["litelm-edge", *sys.argv[4:]]
from litelm_edge.cli import main  # noqa: E402

main()
