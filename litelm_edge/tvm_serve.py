"""Host-side parity server: runs TvmRuntime on this machine's library inside the TVM venv.

    python -m litelm_edge.tvm_serve LIB_DIR MANIFEST.json

The main environment cannot import TVM (it conflicts with other toolchains), so export's parity
check talks to this process over pipes: each request is one int64 array in .npy format
([0, ids...] = prefill, [1, token] = decode), each answer one float32 array of logits.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from litelm_edge.runtime_tvm import TvmRuntime


def main(lib_dir: str, manifest: str) -> int:
    rt = TvmRuntime(Path(lib_dir), json.loads(Path(manifest).read_text()), threads=None)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while inp.peek(1):
        req = np.load(inp)
        logits = rt.prefill(req[1:]) if req[0] == 0 else rt.decode(int(req[1]))
        np.save(out, np.ascontiguousarray(logits, np.float32))
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
