"""ONNX Runtime on the device: decoder.onnx, one graph for prefill (P = 0) and decode (T = 1).

Device side: needs only numpy and onnxruntime (no litelm_edge import); uploaded beside the runner.
API (every runtime.py): Runtime(art_dir, manifest, threads); prefill(ids int64 (T,)) -> logits
float32 (T, V), resetting and filling the KV cache; decode(token int) -> logits (V,), appending one
position. PACKAGES is what `--install-runtime` pip-installs; MODULE is whose version is reported.
Here also: prefill_last(ids) -> (V,) (serving: the LM head on the last position only) and a spin
policy (spins = True: the runner passes spin=True/False for the intra-op workers).
Two graphs (the manifest's "kv_cache"): the torch.export graph (past in, past+new out) and the
fused graph with one KV buffer per layer shared by past and present ("shared-buffer").
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PACKAGES = ["onnxruntime", "numpy"]
MODULE = "onnxruntime"


def session_options(ort, threads: int | None, spin: bool | None = None):
    """`threads` intra-op threads (None: ORT's default, one per core); idle workers spin only when
    asked (a spinning pool burns the cores a neighbour or a sibling session needs)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if spin is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if os.environ.get("LITELM_ORT_PROFILE"):  # benchmarks/ort_profile.py: per-node timings
        so.enable_profiling = True
        so.profile_file_prefix = os.environ["LITELM_ORT_PROFILE"]
    return so


def _session(art_dir: Path, manifest: dict, threads, spin):
    import onnxruntime as ort  # ImportError: the runner says how to install PACKAGES
    path = str(Path(art_dir) / manifest["graphs"]["decoder"])
    return ort, ort.InferenceSession(path, session_options(ort, threads, spin), providers=["CPUExecutionProvider"])


class OrtRuntime:
    """The torch.export graph: past KV in, past+new KV out (concatenated inside the graph)."""
    spins = True

    def __new__(cls, art_dir: Path, manifest: dict, threads: int | None, spin: bool | None = None):
        if cls is OrtRuntime and manifest.get("kv_cache") == "shared-buffer":
            cls = OrtSharedKvRuntime  # the fused graph (backends/ort/fused.py)
        return super().__new__(cls)

    def __init__(self, art_dir: Path, manifest: dict, threads: int | None, spin: bool | None = None):
        _, self.sess = _session(art_dir, manifest, threads, spin)
        m = manifest["model"]
        hd = m.get("head_dim") or m["n_embd"] // m["n_head"]  # head pruning decouples it from n_embd
        self.empty = np.zeros((m["n_layer"], 1, m["n_kv_head"], 0, hd), np.float32)
        self.k = self.v = self.empty

    def _run(self, ids: np.ndarray, k, v):
        return self.sess.run(None, {"input_ids": ids.reshape(1, -1).astype(np.int64), "past_k": k, "past_v": v})

    def prefill(self, ids):
        logits, self.k, self.v = self._run(ids, self.empty, self.empty)
        return logits[0]

    def prefill_last(self, ids):
        return self.prefill(ids)[-1]

    def decode(self, token):
        logits, self.k, self.v = self._run(np.array([token]), self.k, self.v)
        return logits[0, -1]


class OrtSharedKvRuntime(OrtRuntime):
    """The fused graph: GroupQueryAttention reads and writes one preallocated KV buffer per layer,
    bound once as both past and present (IO binding), so a decode step writes its one position in
    place; the last position's logits land in a preallocated array. Per call only the token ids,
    the mask length and logits_to_keep are bound: no allocation, no copy of the cache."""

    def __init__(self, art_dir: Path, manifest: dict, threads: int | None, spin: bool | None = None):
        self.ort, self.sess = ort, _ = _session(art_dir, manifest, threads, spin)
        m, io = manifest["model"], manifest["io"]
        self.S = m["max_seq_len"]
        shape = (1, m["n_kv_head"], self.S, m.get("head_dim") or m["n_embd"] // m["n_head"])
        self.io = self.sess.io_binding()
        self.cache = []  # (1, nkv, S, hd) float32 per layer and k/v: past and present at once
        for i in range(m["n_layer"]):
            for kind in ("key", "value"):
                buf = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))
                self.io.bind_ortvalue_input(io["inputs"][f"past_{kind}_names"] % i, buf)
                self.io.bind_ortvalue_output(io["outputs"][f"present_{kind}_names"] % i, buf)
                self.cache.append(buf)
        self.mask = np.ones((1, self.S), np.int64)
        self.last = np.zeros((1, 1, m["vocab_size"]), np.float32)  # logits of one position
        self.last_ov = ort.OrtValue.ortvalue_from_numpy(self.last)
        self.one = np.array([1], np.int64)
        self.P = 0  # positions in the cache

    def _run(self, ids: np.ndarray, keep: int) -> np.ndarray:
        """-> logits (keep, V) of the last `keep` positions, a copy the caller may hold."""
        T = ids.size
        if self.P + T > self.S:
            raise ValueError(f"sequence of {self.P + T} tokens exceeds the KV cache ({self.S}, the model's max_seq_len)")
        self.io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, np.int64).reshape(1, T))
        self.io.bind_cpu_input("attention_mask", self.mask[:, :self.P + T])
        self.io.bind_cpu_input("logits_to_keep", self.one if keep == 1 else np.array([keep], np.int64))
        out = self.last if keep == 1 else np.empty((1, keep, self.last.shape[-1]), np.float32)
        self.io.bind_ortvalue_output("logits", self.last_ov if keep == 1 else self.ort.OrtValue.ortvalue_from_numpy(out))
        self.sess.run_with_iobinding(self.io)
        self.P += T
        return out[0].copy() if keep == 1 else out[0]

    def prefill(self, ids):
        self.P = 0
        return self._run(ids, ids.size)

    def prefill_last(self, ids):
        self.P = 0
        return self._run(ids, 1)[-1]

    def decode(self, token):
        return self._run(np.array([token], np.int64), 1)[-1]


Runtime = OrtRuntime
