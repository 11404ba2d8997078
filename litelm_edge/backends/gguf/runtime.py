"""llama.cpp on the device: model.gguf through llama-cpp-python (ctypes over libllama).

Device side: needs only numpy and llama-cpp-python (no litelm_edge import); uploaded beside the
runner. The API is ort/runtime.py's: prefill(ids int64 (T,)) -> logits float32 (T, V), the KV cache
reset and filled; decode(token) -> logits (V,), one position appended.

Why llama-cpp-python: it is llama.cpp's Python binding, kept in step with llama.cpp (its sdist
vendors the llama.cpp it binds), and the one PyPI package a phone, a Pi or a server installs to run
a GGUF from Python. Its `Llama.eval` appends tokens to the cache and, with logits_all, keeps every
position's logits (`scores`), which is what the parity check reads. The KV cache type and flash
attention come from the manifest (the target's [gguf] table): f32 by default, so an f32 GGUF's
logits stay within 1e-3 of torch (llama.cpp's own default, f16, rounds every cached key and value).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PACKAGES = ["llama-cpp-python", "numpy"]  # pip builds llama.cpp from the sdist (minutes)
MODULE = "llama_cpp"
GRAPH = "graphs.model"  # the manifest key naming the file this runtime opens
KV_TYPES = {"f32": 0, "f16": 1}  # GGML_TYPE_F32, GGML_TYPE_F16


def default_threads(manifest: dict) -> int | None:
    """The build asks for no thread count: the runner chooses."""
    return None


class GgufRuntime:
    spins = False  # llama.cpp's pool takes no spin policy here

    def __init__(self, graph: Path, manifest: dict, threads: int | None):
        import llama_cpp  # ImportError: the runner says how to install PACKAGES
        meta, m = manifest.get("gguf", {}), manifest["model"]
        kv = KV_TYPES[meta.get("kv_type", "f32")]
        # tokens a llama_decode call takes (llama.cpp's default); longer prompts run in chunks
        batch = min(512, m["max_seq_len"])
        self.llm = llama_cpp.Llama(str(graph), n_ctx=m["max_seq_len"],
                                   n_batch=batch, n_ubatch=batch, n_threads=threads,
                                   n_threads_batch=threads, logits_all=True, type_k=kv, type_v=kv,
                                   flash_attn=bool(meta.get("flash_attn")), verbose=False)
        self.S = m["max_seq_len"]

    def _eval(self, ids) -> np.ndarray:
        start = self.llm.n_tokens
        if start + len(ids) > self.S:
            raise ValueError(f"sequence of {start + len(ids)} tokens exceeds the KV cache "
                             f"({self.S}, the model's max_seq_len)")
        self.llm.eval([int(t) for t in ids])
        return self.llm.scores[start:self.llm.n_tokens]  # (T, V) float32, a view of llama-cpp-python's array

    def prefill(self, ids):
        self.llm.reset()
        return self._eval(ids).copy()

    def decode(self, token):
        return self._eval([token])[-1].copy()

    def close(self):
        self.llm.close()


Runtime = GgufRuntime
