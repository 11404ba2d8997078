"""LiteRT on the device: model.tflite with prefill/decode signatures that take the KV cache in
and hand it back.

Device side: needs only numpy and ai-edge-litert (no litelm_edge import); uploaded beside the
runner. The API is ort/runtime.py's.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

PACKAGES = ["ai-edge-litert", "numpy"]  # Linux/Android-Termux arm64 and x86_64 wheels on PyPI
MODULE = "ai_edge_litert"

TFLITE_RUNTIME_WARNING = ("warning: ai_edge_litert not found, using tflite_runtime: tflite-runtime 2.14 "
                          "gives wrong answers on these files (on-device parity will tell); "
                          "pip install ai-edge-litert")


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError as e:
        raise ImportError("ai_edge_litert is not installed", name="ai_edge_litert") from e
    print(f"[runner] {TFLITE_RUNTIME_WARNING}", file=sys.stderr, flush=True)
    return Interpreter, "tflite_runtime"


class LiteRTRuntime:
    """model.tflite with prefill/decode signatures that take the KV cache in and hand it back.
    Full-integer INT8 models have int8 inputs/outputs: values are (de)quantized with each tensor's
    scale and zero point, so callers always see float32 logits."""

    def __init__(self, art_dir: Path, manifest: dict, threads: int | None):
        Interpreter, self.runtime_name = _interpreter_class()
        path = Path(art_dir) / manifest.get("graphs", {}).get("model", "model.tflite")
        self.it = Interpreter(model_path=str(path), num_threads=threads or manifest.get("threads") or 1)
        self.sig = {s: self.it.get_signature_runner(s) for s in ("prefill", "decode")}
        self.ins = {s: r.get_input_details() for s, r in self.sig.items()}
        self.outs = {s: r.get_output_details() for s, r in self.sig.items()}
        self.cache_names = sorted(n for n in self.ins["prefill"] if n[:2] in ("k_", "v_"))
        self.prefill_len = int(self.ins["prefill"]["tokens"]["shape"][1])
        self.capacity = int(self.ins["prefill"][self.cache_names[0]]["shape"][2])
        self.pos = 0
        self.cache = {}

    @staticmethod
    def _to(detail: dict, x: np.ndarray) -> np.ndarray:
        """float -> the tensor's dtype, quantizing when the model takes integer activations."""
        dt = np.dtype(detail["dtype"])
        if dt.kind == "f" or x.dtype == dt:
            return x.astype(dt, copy=False)
        scale, zp = detail["quantization"]
        info = np.iinfo(dt)
        return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dt)

    @staticmethod
    def _from(detail: dict, y: np.ndarray) -> np.ndarray:
        if np.dtype(detail["dtype"]).kind == "f":
            return y.astype(np.float32, copy=False)
        scale, zp = detail["quantization"]
        return ((y.astype(np.float32) - zp) * scale).astype(np.float32)

    def _run(self, sig: str, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        ins, outs = self.ins[sig], self.outs[sig]
        feed = {n: self._to(ins[n], self.cache[n]) for n in self.cache_names}
        out = self.sig[sig](tokens=tokens.astype(np.int32)[None], input_pos=positions.astype(np.int32), **feed)
        self.cache = {n: self._from(outs[n], out[n]) for n in self.cache_names}
        return self._from(outs["logits"], out["logits"])[0]  # (T, V)

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """ids (T,) int64 -> logits (T, V) float32; resets the cache, runs in prefill_len chunks."""
        ids = np.asarray(ids, np.int64)
        if len(ids) > self.capacity:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the cache capacity {self.capacity}: "
                             "rebuild with a larger --set litert.capacity")
        self.cache = {n: np.zeros(self.ins["prefill"][n]["shape"], np.float32) for n in self.cache_names}
        P, logits = self.prefill_len, []
        for s in range(0, len(ids), P):
            chunk = ids[s:s + P]
            n = len(chunk)
            padded = np.zeros(P, np.int64)
            padded[:n] = chunk  # padding writes cache slots past the prompt; the mask hides them
            if s + P > self.capacity:  # dynamic_update_slice would clamp the write to a wrong slot
                raise ValueError(f"prompt chunk at {s} does not fit capacity {self.capacity}: "
                                 "use a capacity that is a multiple of prefill_len")
            logits.append(self._run("prefill", padded, np.arange(s, s + P))[:n])
        self.pos = len(ids)
        return np.concatenate(logits)

    def decode(self, token: int) -> np.ndarray:
        """One token at the current position -> logits (V,)."""
        if self.pos >= self.capacity:
            raise ValueError(f"KV cache full ({self.capacity} tokens): rebuild with a larger capacity")
        y = self._run("decode", np.array([token], np.int64), np.array([self.pos]))[0]
        self.pos += 1
        return y


Runtime = LiteRTRuntime
