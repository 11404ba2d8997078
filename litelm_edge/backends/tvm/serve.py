"""Host-side parity server: runs TvmRuntime on this machine's library inside the TVM venv.

    python -m litelm_edge.backends.tvm.serve LIB_DIR MANIFEST.json

The main environment cannot import TVM (it conflicts with other toolchains), so the build flow's parity
check talks to this process over pipes: each request is one int64 array in .npy format
([0, ids...] = prefill, [1, token] = decode, [2, ids...] = prefill_last), each answer one float32
array of logits.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from litelm_edge.backends.tvm.runtime import TvmRuntime
from litelm_edge.devices.facts import affinity


def send(f, arr: np.ndarray):
    """One array as an 8-byte length and .npy bytes (np.load cannot read from a pipe)."""
    buf = io.BytesIO()
    np.save(buf, arr)
    f.write(len(buf.getbuffer()).to_bytes(8, "little") + buf.getvalue())
    f.flush()


def recv(f) -> np.ndarray | None:
    head = f.read(8)
    if len(head) < 8:
        return None  # the other side closed the pipe
    return np.load(io.BytesIO(f.read(int.from_bytes(head, "little"))))


def main(lib_dir: str, manifest: str) -> int:
    m = json.loads(Path(manifest).read_text())  # the build's own, before it is sealed
    # the CPUs this process may use (the runner's choose_threads starts from them): with TVM_NUM_THREADS
    # unset, TVM's pool took 5.3 us a parallel launch on a 2-core host, with it set 0.8 us
    rt = TvmRuntime(Path(lib_dir) / m["tvm"]["library"], m, threads=len(affinity()))
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while (req := recv(inp)) is not None:
        call = {0: rt.prefill, 2: rt.prefill_last}.get(int(req[0]))
        logits = call(req[1:]) if call else rt.decode(int(req[1]))
        send(out, np.ascontiguousarray(logits, np.float32))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
