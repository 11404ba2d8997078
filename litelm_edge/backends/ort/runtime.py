"""ONNX Runtime on the device: decoder.onnx, one graph for prefill (empty past) and decode (T = 1).

Device side: needs only numpy and onnxruntime (no litelm_edge import); uploaded beside the runner.
API (every runtime.py): Runtime(art_dir, manifest, threads); prefill(ids int64 (T,)) -> logits
float32 (T, V), resetting and filling the KV cache; decode(token int) -> logits (V,), appending one
position. PACKAGES is what `--install-runtime` pip-installs; MODULE is whose version is reported.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PACKAGES = ["onnxruntime", "numpy"]
MODULE = "onnxruntime"


class OrtRuntime:
    def __init__(self, art_dir: Path, manifest: dict, threads: int | None):
        import onnxruntime as ort  # ImportError: the runner says how to install PACKAGES
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0  # 0 = ORT's default (all cores)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        path = str(Path(art_dir) / manifest["graphs"]["decoder"])
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        m = manifest["model"]
        hd = m.get("head_dim") or m["n_embd"] // m["n_head"]  # head pruning decouples it from n_embd
        self.empty = np.zeros((m["n_layer"], 1, m["n_kv_head"], 0, hd), np.float32)
        self.k = self.v = self.empty

    def _run(self, ids: np.ndarray, k, v):
        return self.sess.run(None, {"input_ids": ids.reshape(1, -1).astype(np.int64), "past_k": k, "past_v": v})

    def prefill(self, ids):
        logits, self.k, self.v = self._run(ids, self.empty, self.empty)
        return logits[0]

    def decode(self, token):
        logits, self.k, self.v = self._run(np.array([token]), self.k, self.v)
        return logits[0, -1]


Runtime = OrtRuntime
