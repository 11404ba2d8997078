"""Apache TVM on the device: the Relax VM library `model.so`, one function `forward` serving prefill
(empty cache) and decode (T = 1), and in libraries since 2026-12-07 `forward_last` (the manifest's
tvm.entry_last), the same with the last position's logits only: serving's prefill, whose LM head is
then one GEMV. Two cache layouts, told apart by the manifest's tvm.cache:
    per layer (tvm.cache = CACHE): forward(idx, k_0..k_{L-1}, v_0..v_{L-1}) -> (logits, L k, L v),
        k (1, nkv, hd, P), v (1, nkv, P, hd);
    stacked (no tvm.cache: libraries built before it): forward(idx, k, v) -> (logits, k, v),
        k and v (L, 1, nkv, P, hd).

Device side: needs only numpy and the apache-tvm wheel (no litelm_edge import); uploaded beside
the runner, and run by serve.py in the TVM venv for the host parity check. TVM_USE_RUNTIME_LIB=1
loads only libtvm_runtime.so (3 MB), never the 250 MB compiler; the cache stays a TVM tensor
between decode steps. The API is ort/runtime.py's.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# aarch64 and x86_64 wheels; only the runtime library is loaded
PACKAGES = ["numpy", "apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0"]
MODULE = "tvm"
GRAPH = "tvm.library"  # the manifest key naming the file this runtime opens
CACHE = {"k": "(1,nkv,hd,P)", "v": "(1,nkv,P,hd)"}  # tvm.cache's layout (and n_layer): graph.CACHE_LAYOUT


def default_threads(manifest: dict) -> int | None:
    """The build asks for no thread count: the runner chooses."""
    return None


def empty_caches(meta: dict) -> list:
    """The empty caches `forward` takes after idx, for the manifest's tvm section: per layer (its
    cache is CACHE), k_0..k_{L-1} then v_0..v_{L-1}; stacked (no cache key), k then v."""
    L, _, nkv, _, hd = meta["cache_shape"]  # (n_layer, 1, n_kv_head, 0, hd)
    cache = meta.get("cache")
    if cache is None:
        return [np.zeros((L, 1, nkv, 0, hd), np.float32)] * 2
    if cache != CACHE | {"n_layer": L}:
        raise ValueError(f"tvm.cache {cache} is no layout this runtime knows ({CACHE | {'n_layer': L}}): "
                         "bench the artifact with the runner of the litelm-edge that built it")
    return [np.zeros((1, nkv, hd, 0), np.float32)] * L + [np.zeros((1, nkv, 0, hd), np.float32)] * L


class TvmRuntime:
    spins = False  # TVM's pool takes no spin policy

    def __init__(self, graph: Path, manifest: dict, threads: int | None):
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
        if threads:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts
        import tvm  # ImportError: the runner says how to install PACKAGES
        from tvm.runtime import vm as tvm_vm
        meta = manifest["tvm"]
        self.empty = empty_caches(meta)
        self.tensor = tvm.runtime.tensor
        lib = tvm.runtime.load_module(str(graph))  # the verified meta["library"]
        vm = tvm_vm.VirtualMachine(lib, tvm.cpu())
        self.fn = vm[meta.get("entry", "forward")]
        self.fn_last = vm[meta["entry_last"]] if "entry_last" in meta else self.fn
        self.kv: list = []  # the k tensors, then the v tensors

    def _run(self, ids: np.ndarray, fn=None) -> np.ndarray:
        logits, *self.kv = (fn or self.fn)(self.tensor(np.asarray(ids, np.int64).reshape(1, -1)), *self.kv)
        return logits.numpy()[0]  # (T, V), or (1, V) from fn_last

    def prefill(self, ids):
        self.kv = [self.tensor(c) for c in self.empty]
        return self._run(ids)

    def prefill_last(self, ids):
        self.kv = [self.tensor(c) for c in self.empty]
        return self._run(ids, self.fn_last)[-1]

    def decode(self, token):
        return self._run(np.array([token], np.int64))[0]


Runtime = TvmRuntime
