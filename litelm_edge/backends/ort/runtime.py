"""ONNX Runtime on the device: decoder.onnx, one graph for prefill (P = 0) and decode (T = 1).

Device side: needs only numpy and onnxruntime (no litelm_edge import); uploaded beside the runner.
API (every runtime.py): Runtime(graph, manifest, threads), graph the verified path of the file
named by the manifest key GRAPH (the runner's open_runtime builds it: manifest.graph_path); prefill(ids int64 (T,)) -> logits
float32 (T, V), resetting and filling the KV cache; decode(token int) -> logits (V,), appending one
position; Runtime.spins: whether the runner passes spin=True/False for idle workers.
default_threads(manifest): the threads the build's settings ask for (manifest[section]), None for
the runner's choice. PACKAGES is what `--install-runtime` pip-installs; MODULE is whose version is
reported. Here also: prefill_last(ids) -> (V,) (serving: the LM head on the last position only).
Two graphs (the manifest's "kv_cache"): the torch.export graph (past in, past+new out) and the
fused graph with one KV buffer per layer shared by past and present ("shared-buffer").
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

PACKAGES = ["onnxruntime", "numpy"]
MODULE = "onnxruntime"
GRAPH = "graphs.decoder"  # the manifest key naming the file this runtime opens


def default_threads(manifest: dict) -> int | None:
    """The intra-op threads the build asks for at most ([ort] threads); None: the runner chooses."""
    return manifest.get("ort", {}).get("threads")


def session_options(ort, threads: int | None, spin: bool | None = None):
    """`threads` intra-op threads (None: ORT's default, one per core); idle workers spin only when
    asked (a spinning pool burns the cores a neighbour or a sibling session needs). Denormal floats
    are flushed to zero: a trained minimind-26m's MatMulNBits graphs decode 10-12 % faster so on
    x86 (docs/x86-speed.md), and no logit moves by a denormal's worth (< 1.2e-38). ORT sets the
    flush on the thread that creates the session too, where it stays: numpy and torch on that
    thread then also read numbers below 1.2e-38 as zero (measured: no training step changes speed)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if spin is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if os.environ.get("LITELM_ORT_PROFILE"):  # benchmarks/ort_profile.py: per-node timings
        so.enable_profiling = True
        so.profile_file_prefix = os.environ["LITELM_ORT_PROFILE"]
    return so


def _session(graph: Path, threads, spin):
    import onnxruntime as ort  # ImportError: the runner says how to install PACKAGES
    return ort, ort.InferenceSession(str(graph), session_options(ort, threads, spin),
                                     providers=["CPUExecutionProvider"])


class OrtRuntime:
    """The torch.export graph: past KV in, past+new KV out (concatenated inside the graph)."""
    spins = True

    def __new__(cls, graph: Path, manifest: dict, threads: int | None, spin: bool | None = None):
        if cls is OrtRuntime and manifest.get("kv_cache") == "shared-buffer":
            cls = OrtSharedKvRuntime  # the fused graph (backends/ort/fused.py)
        return super().__new__(cls)

    def __init__(self, graph: Path, manifest: dict, threads: int | None, spin: bool | None = None):
        _, self.sess = _session(graph, threads, spin)
        m = manifest["model"]
        hd = m.get("head_dim") or m["n_embd"] // m["n_head"]  # head pruning decouples it from n_embd
        self.empty = np.zeros((m["n_layer"], 1, m["n_kv_head"], 0, hd), np.float32)
        self.k = self.v = self.empty

    def _run(self, ids: np.ndarray, k, v):
        return self.sess.run(None, {"input_ids": ids.reshape(1, -1).astype(np.int64), "past_k": k,
                                    "past_v": v})

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
    place; the last position's logits land in a preallocated array. A decode step writes its token
    into a bound array and rebinds only the attention mask (one view per length, made once): binding
    a numpy array anew costs ~10 us an input, 3-4 % of a 26M model's step. No allocation, no copy
    of the cache."""

    def __init__(self, graph: Path, manifest: dict, threads: int | None, spin: bool | None = None):
        self.ort, self.sess = ort, _ = _session(graph, threads, spin)
        m, io = manifest["model"], manifest["io"]
        self.S = m["max_seq_len"]
        shape = (1, m["n_kv_head"], self.S, m.get("head_dim") or m["n_embd"] // m["n_head"])
        ov = ort.OrtValue.ortvalue_from_numpy  # wraps the array (no copy) and holds a reference to it
        self.io = self.sess.io_binding()
        self.cache = []  # (1, nkv, S, hd) float32 per layer and k/v: past and present at once
        for i in range(m["n_layer"]):
            for kind in ("key", "value"):
                buf = ov(np.zeros(shape, np.float32))
                self.io.bind_ortvalue_input(io["inputs"][f"past_{kind}_names"] % i, buf)
                self.io.bind_ortvalue_output(io["outputs"][f"present_{kind}_names"] % i, buf)
                self.cache.append(buf)
        self.mask, self.masks = np.ones((1, self.S), np.int64), {}  # all ones; length -> OrtValue of a view
        self.last = np.zeros((1, 1, m["vocab_size"]), np.float32)  # logits of one position
        self.last_ov = ov(self.last)
        self.token = np.zeros((1, 1), np.int64)  # a decode step's input id, written in place
        self.token_ov = ov(self.token)
        self.one_ov = ov(np.array([1], np.int64))
        self.stepping = False  # the bindings are a decode step's (token, keep 1, logits -> self.last)
        self.P = 0  # positions in the cache

    def _positions(self, n: int):
        """Tell the graph the sequence is n positions long once this run is done (the mask's length)."""
        if n > self.S:
            raise ValueError(f"sequence of {n} tokens exceeds the KV cache ({self.S}, the model's "
                             "max_seq_len)")
        ov = self.masks.get(n)
        if ov is None:
            ov = self.masks[n] = self.ort.OrtValue.ortvalue_from_numpy(self.mask[:, :n])
        self.io.bind_ortvalue_input("attention_mask", ov)

    def _run(self, ids: np.ndarray, keep: int) -> np.ndarray:
        """A prompt of T tokens -> logits (keep, V) of its last `keep` positions, arrays the caller may hold."""
        T = ids.size
        self._positions(self.P + T)
        ids = np.ascontiguousarray(ids, np.int64).reshape(1, T)
        out = self.last if keep == 1 else np.empty((1, keep, self.last.shape[-1]), np.float32)
        # each wrapper holds its array: held here until the run ends
        ov = self.ort.OrtValue.ortvalue_from_numpy
        bound = (ov(ids), self.one_ov if keep == 1 else ov(np.array([keep], np.int64)),
                 self.last_ov if keep == 1 else ov(out))
        self.io.bind_ortvalue_input("input_ids", bound[0])
        self.io.bind_ortvalue_input("logits_to_keep", bound[1])
        self.io.bind_ortvalue_output("logits", bound[2])
        self.stepping = False
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
        self._positions(self.P + 1)
        if not self.stepping:
            self.io.bind_ortvalue_input("input_ids", self.token_ov)
            self.io.bind_ortvalue_input("logits_to_keep", self.one_ov)
            self.io.bind_ortvalue_output("logits", self.last_ov)
            self.stepping = True
        self.token[0, 0] = token
        self.sess.run_with_iobinding(self.io)
        self.P += 1
        return self.last[0, 0].copy()


Runtime = OrtRuntime
