"""Apache TVM on the device: the Relax VM library `model.so`, one function `forward` serving prefill
(empty cache) and decode (T = 1), and in libraries since 2026-12-07 `forward_last` (the manifest's
tvm.entry_last), the same with the last position's logits only: serving's prefill, whose LM head is
then one GEMV. Three cache layouts, told apart by the manifest's tvm.cache:
    in place (tvm.cache = CACHE, since 2026-12-07): forward(idx, pos, k_0..k_{L-1}, v_0..v_{L-1})
        -> logits, k (1, nkv, hd, C), v (1, nkv, C, hd) this runtime's, of a capacity C it grows;
        the library writes the step's keys and values at pos (the tokens cached before);
    per layer (tvm.cache = CONCAT): forward(idx, k_0..k_{L-1}, v_0..v_{L-1}) -> (logits, L k, L v),
        k (1, nkv, hd, P), v (1, nkv, P, hd): new caches each call;
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
# tvm.cache's layouts (and n_layer): CACHE is graph.CACHE_LAYOUT, CONCAT the one before it
CACHE = {"k": "(1,nkv,hd,C)", "v": "(1,nkv,C,hd)", "pos": "(1,) int64", "write": "in place"}
CONCAT = {"k": "(1,nkv,hd,P)", "v": "(1,nkv,P,hd)"}
MIN_CAPACITY = 256  # positions a fresh in-place cache holds; it doubles when a call needs more


def default_threads(manifest: dict) -> int | None:
    """The build asks for no thread count: the runner chooses."""
    return None


def cache_layout(meta: dict) -> str:
    """"in place", "per layer" or "stacked": the manifest's tvm section's cache layout."""
    cache, L = meta.get("cache"), meta["cache_shape"][0]
    if cache is None:
        return "stacked"
    for name, layout in (("in place", CACHE), ("per layer", CONCAT)):
        if cache == layout | {"n_layer": L}:
            return name
    raise ValueError(f"tvm.cache {cache} is no layout this runtime knows ({CACHE | {'n_layer': L}}): "
                     "bench the artifact with the runner of the litelm-edge that built it")


def empty_caches(meta: dict, capacity: int = 0) -> list:
    """The caches `forward` takes after idx (and pos), for the manifest's tvm section: per layer, k_0..k_{L-1}
    then v_0..v_{L-1}, of `capacity` positions in place, empty for concat; stacked, k then v."""
    L, _, nkv, _, hd = meta["cache_shape"]  # (n_layer, 1, n_kv_head, 0, hd)
    layout = cache_layout(meta)
    if layout == "stacked":
        return [np.zeros((L, 1, nkv, 0, hd), np.float32) for _ in range(2)]
    n = capacity if layout == "in place" else 0
    return ([np.zeros((1, nkv, hd, n), np.float32) for _ in range(L)]
            + [np.zeros((1, nkv, n, hd), np.float32) for _ in range(L)])


class TvmRuntime:
    spins = False  # TVM's pool takes no spin policy

    def __init__(self, graph: Path, manifest: dict, threads: int | None):
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
        if threads:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts
        import tvm  # ImportError: the runner says how to install PACKAGES
        from tvm.runtime import vm as tvm_vm
        self.meta = manifest["tvm"]
        self.in_place = cache_layout(self.meta) == "in place"
        self.tensor = tvm.runtime.tensor
        lib = tvm.runtime.load_module(str(graph))  # the verified meta["library"]
        vm = tvm_vm.VirtualMachine(lib, tvm.cpu())
        self.fn = vm[self.meta.get("entry", "forward")]
        self.fn_last = vm[self.meta["entry_last"]] if "entry_last" in self.meta else self.fn
        self.kv: list = []  # the k tensors, then the v tensors
        self.pos = 0  # tokens in the cache

    def _reset(self):
        """An empty cache. In place, the allocated caches are kept (the library reads only positions it
        wrote in this sequence): a prefill does not pay for zeroing and copying them (SmolLM2: 12 MB)."""
        if not (self.in_place and self.kv):
            self.kv = [self.tensor(c) for c in empty_caches(self.meta, MIN_CAPACITY)]
        self.pos = 0

    def _reserve(self, n: int):
        """In place: caches of at least n positions, the cached ones kept (doubling: a copy per doubling)."""
        cap = self.kv[-1].shape[2]  # v (1, nkv, C, hd)
        if n <= cap:
            return
        grown = empty_caches(self.meta, max(2 * cap, n))
        L = len(grown) // 2
        for i, (new, old) in enumerate(zip(grown, self.kv, strict=True)):
            if i < L:
                new[..., :self.pos] = old.numpy()[..., :self.pos]
            else:
                new[:, :, :self.pos] = old.numpy()[:, :, :self.pos]
        self.kv = [self.tensor(c) for c in grown]

    def _run(self, ids: np.ndarray, fn=None) -> np.ndarray:
        idx = self.tensor(np.asarray(ids, np.int64).reshape(1, -1))
        if self.in_place:
            self._reserve(self.pos + idx.shape[1])
            logits = (fn or self.fn)(idx, self.tensor(np.array([self.pos], np.int64)), *self.kv)
            self.pos += idx.shape[1]
        else:
            logits, *self.kv = (fn or self.fn)(idx, *self.kv)
        return logits.numpy()[0]  # (T, V), or (1, V) from fn_last

    def prefill(self, ids):
        self._reset()
        return self._run(ids)

    def prefill_last(self, ids):
        self._reset()
        return self._run(ids, self.fn_last)[-1]

    def decode(self, token):
        return self._run(np.array([token], np.int64))[0]


Runtime = TvmRuntime
