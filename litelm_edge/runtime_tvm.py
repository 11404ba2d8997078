"""TvmRuntime: the device-side class for TVM artifacts. numpy + the TVM runtime only.

Written to be pasted into `device_runner.py` (one file, no litelm_edge imports) under
RUNTIMES["tvm"]. On the device it needs python3, numpy and the apache-tvm wheel used with
TVM_USE_RUNTIME_LIB=1, which loads only libtvm_runtime.so (3 MB) and never the 250 MB compiler.
The library's one function `forward(idx, k, v)` serves prefill (empty cache) and decode (T = 1);
the cache stays a TVM tensor between steps, so decode copies nothing through numpy.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class TvmRuntime:
    install_hint = ("pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0 "
                    "(aarch64 and x86_64 wheels on PyPI; only its 3 MB runtime library is loaded)")

    def __init__(self, art_dir: Path, manifest: dict, threads: int | None):
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")  # the runtime only, not the compiler
        if threads:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # read when the thread pool starts
        import tvm  # ImportError here: the runner prints install_hint
        from tvm.runtime import vm as tvm_vm
        self.tvm = tvm
        meta = manifest.get("tvm") or manifest.get("extra", {}).get("tvm", {})  # the backend's fields
        self.vm = tvm_vm.VirtualMachine(tvm.runtime.load_module(str(Path(art_dir) / meta.get("library", "model.so"))), tvm.cpu())
        self.fn = self.vm["forward"]
        self.empty = np.zeros(meta["cache_shape"], np.float32)  # (n_layer, 1, n_kv_head, 0, hd)
        self.k = self.v = None

    def _run(self, ids: np.ndarray) -> np.ndarray:
        idx = self.tvm.runtime.tensor(np.asarray(ids, np.int64).reshape(1, -1))
        logits, self.k, self.v = self.fn(idx, self.k, self.v)
        return logits.numpy()[0]  # (T, V)

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """ids (T,) int64 -> logits (T, V) float32; resets the cache."""
        self.k = self.tvm.runtime.tensor(self.empty)
        self.v = self.tvm.runtime.tensor(self.empty)
        return self._run(ids)

    def decode(self, token: int) -> np.ndarray:
        """One step: token -> logits (V,); appends to the cache."""
        return self._run(np.array([token], np.int64))[0]
