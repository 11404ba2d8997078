"""LiteRT on the device: model.tflite with prefill/decode signatures per attention window, the
KV cache kept inside LiteRT between calls.

Device side: needs only numpy and ai-edge-litert (no litelm_edge import); uploaded beside the
runner. The API is ort/runtime.py's.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# manylinux (glibc) arm64/x86_64 wheels only: not Termux (docs/android.md)
PACKAGES = ["ai-edge-litert", "numpy"]
# appended to the pip line when the runtime is missing (devices/runner.open_runtime): a phone user's
# Termux pip finds nothing to install
INSTALL_NOTE = (" (manylinux wheels only, none for Termux: on a phone run it in Debian through proot-distro "
                "with --remote-python, docs/android.md)")
MODULE = "ai_edge_litert"
GRAPH = "graphs.model"  # the manifest key naming the file this runtime opens

TFLITE_RUNTIME_WARNING = ("warning: ai_edge_litert not found, using tflite_runtime: tflite-runtime 2.14 "
                          "gives wrong answers on these files (on-device parity will tell); "
                          "pip install ai-edge-litert")


def default_threads(manifest: dict) -> int | None:
    """The XNNPACK threads the build asks for ([litert] threads: the phone's big cores)."""
    return manifest.get("litert", {}).get("threads")


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


class _InterpreterCaches:
    """Caches through numpy: the classic Interpreter's signature runner copies every input in and
    every output out (tflite_runtime, and ai_edge_litert without CompiledModel)."""

    def __init__(self, it, details: dict):
        self.sig = {s: it.get_signature_runner(s) for s in details}
        self.names, self.cache = [], {}

    def reset(self, zeros: dict):
        self.names, self.cache = list(zeros), dict(zeros)

    def run(self, sig: str, tokens: np.ndarray, positions: np.ndarray, extra: dict) -> np.ndarray:
        out = self.sig[sig](tokens=tokens[None], input_pos=positions, **extra, **self.cache)
        self.cache = {n: out[n] for n in self.names}
        return out["logits"]


class _CompiledCaches:
    """Caches kept inside LiteRT: ai_edge_litert's CompiledModel, each cache one TensorBuffer bound
    as both the input and the output of every signature, so dynamic_update_slice writes the new
    positions in place and nothing of the cache crosses into Python between tokens."""

    def __init__(self, path: Path, threads: int, details: dict):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options
        opts = Options(hardware_accelerators=HardwareAccelerator.CPU,
                       cpu_options=CpuOptions(num_threads=threads))
        self.cm = CompiledModel.from_file(str(path), options=opts)
        self.details, self.cache = details, {}
        self.io = {s: ({n: self.cm.create_input_buffer_by_name(s, n) for n in ("tokens", "input_pos", "last")
                        if n in details[s][0]}, self.cm.create_output_buffer_by_name(s, "logits")) for s in details}

    def reset(self, zeros: dict):
        if not self.cache:  # one buffer per cache, shared by every signature
            sig = next(iter(self.details))
            self.cache = {n: self.cm.create_input_buffer_by_name(sig, n) for n in zeros}
        for n, z in zeros.items():
            self.cache[n].write(z)

    def run(self, sig: str, tokens: np.ndarray, positions: np.ndarray, extra: dict) -> np.ndarray:
        ins, logits = self.io[sig]
        for name, x in (("tokens", tokens[None]), ("input_pos", positions), *extra.items()):
            ins[name].write(x)
        self.cm.run_by_name(sig, {**ins, **self.cache}, {"logits": logits, **self.cache})
        d = self.details[sig][1]["logits"]
        return logits.read(int(np.prod(d["shape"])), d["dtype"]).reshape(d["shape"])


def compiled_model_available() -> bool:
    try:
        from ai_edge_litert.compiled_model import CompiledModel  # noqa: F401  (ai_edge_litert >= 2.0)
        return True
    except ImportError:
        return False


class LiteRTRuntime:
    """model.tflite with prefill and decode signatures per attention window (`prefill_<W>`,
    `decode_<W>`: the call attends over cache positions < W; files built before windows have
    `prefill` and `decode`, W = capacity). Each call takes the smallest window that holds every
    position written so far. The KV cache stays inside LiteRT between calls where CompiledModel
    exists (`cache_in_place`; `in_place=False` forces the numpy path), else it travels through
    numpy. Full-integer INT8 models have int8 inputs/outputs: values are (de)quantized with each
    tensor's scale and zero point, so callers always see float32 logits."""

    spins = False  # XNNPACK takes no spin policy

    def __init__(self, graph: Path, manifest: dict, threads: int | None, in_place: bool | None = None):
        Interpreter, self.runtime_name = _interpreter_class()
        path = Path(graph)  # the verified graphs.model
        threads = threads or default_threads(manifest) or 1
        it = Interpreter(model_path=str(path), num_threads=threads)  # reads the signatures' details
        self.details = {s: (it.get_signature_runner(s).get_input_details(),
                            it.get_signature_runner(s).get_output_details()) for s in it.get_signature_list()}
        ins = self.details[next(s for s in self.details if s.startswith("prefill"))][0]
        self.cache_names = sorted(n for n in ins if n[:2] in ("k_", "v_"))
        self.prefill_len = int(ins["tokens"]["shape"][1])
        self.capacity = int(ins[self.cache_names[0]]["shape"][2])
        self.windows = {kind: sorted((int(s.partition("_")[2] or self.capacity), s) for s in self.details
                                     if s.partition("_")[0] == kind) for kind in ("prefill", "decode")}
        if in_place is None:
            in_place = self.runtime_name == "ai_edge_litert" and compiled_model_available()
        self.engine = None
        if in_place:
            try:
                self.engine = _CompiledCaches(path, threads, self.details)
            except RuntimeError as e:  # seen on arm64 under qemu-user: CompiledModel cannot be created
                print(f"[runner] LiteRT CompiledModel unavailable ({str(e).strip()[:120]}): "
                      "caches go through numpy", file=sys.stderr, flush=True)
        self.cache_in_place = self.engine is not None
        self.engine = self.engine or _InterpreterCaches(it, self.details)
        self.pos = 0
        # Cache slots past the positions written hold what an earlier prompt left there. A mask of
        # -1e4 gives them exactly zero weight (exp underflows), so they are zeroed once; a small
        # mask (int8-full's -30, or a manifest without one) lets them leak: zeroed every prefill.
        self.rezero = manifest.get("litert", {}).get("mask_value", 0.0) > -1e3
        self.zeroed = False
        self.last_only = "last" in ins  # the prefill signatures' LM head on one position

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

    def _run(self, kind: str, tokens: np.ndarray, positions: np.ndarray, last: int = 0) -> np.ndarray:
        """-> logits (T, V), or (1, V) of position `last` of the call where the signature takes `last`."""
        end = int(positions[-1])
        sig = next(s for w, s in self.windows[kind] if end < w)  # the smallest window holding `end`
        ins, outs = self.details[sig]
        extra = {"last": np.array([last], ins["last"]["dtype"])} if "last" in ins else {}
        y = self.engine.run(sig, tokens.astype(ins["tokens"]["dtype"]),
                            positions.astype(ins["input_pos"]["dtype"]), extra)
        return self._from(outs["logits"], y)[0]

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """ids (T,) int64 -> logits (T, V) float32 (parity, perplexity), from a fresh cache. Files
        whose prefill signatures run the LM head on one position (`last_only`) give the others
        through decode calls, one a token: slower, and the same numbers a reply sees."""
        ids = np.asarray(ids, np.int64)
        if not self.last_only:
            return self._prefill(ids, keep_all=True)
        self._check_fits(len(ids))
        self._reset()
        self.pos = 0
        return np.stack([self.decode(int(t)) for t in ids])

    def prefill_last(self, ids: np.ndarray) -> np.ndarray:
        """ids (T,) -> the last position's logits (V,): what serving needs, in prefill_len chunks."""
        return self._prefill(np.asarray(ids, np.int64), keep_all=False)

    def _check_fits(self, n: int):
        if n > self.capacity:
            raise ValueError(f"prompt of {n} tokens exceeds the cache capacity {self.capacity}: "
                             "rebuild with a larger --set litert.capacity")

    def _reset(self):
        if self.rezero or not self.zeroed:
            ins = next(iter(self.details.values()))[0]
            self.engine.reset({n: self._to(ins[n], np.zeros(ins[n]["shape"], np.float32)) for n in self.cache_names})
            self.zeroed = True

    def _prefill(self, ids: np.ndarray, keep_all: bool) -> np.ndarray:
        """Resets the cache and runs ids in prefill_len chunks: every position's logits (T, V) (files
        whose head runs on every position), or the last position's (V,)."""
        self._check_fits(len(ids))
        self._reset()
        P, logits = self.prefill_len, []
        for s in range(0, len(ids), P):
            chunk = ids[s:s + P]
            n = len(chunk)
            padded = np.zeros(P, np.int64)
            padded[:n] = chunk  # padding writes cache slots past the prompt; the mask hides them
            if s + P > self.capacity:  # dynamic_update_slice would clamp the write to a wrong slot
                raise ValueError(f"prompt chunk at {s} does not fit capacity {self.capacity}: "
                                 "use a capacity that is a multiple of prefill_len")
            y = self._run("prefill", padded, np.arange(s, s + P), last=n - 1)
            if keep_all:
                logits.append(y[:n])
        self.pos = len(ids)
        return np.concatenate(logits) if keep_all else y[-1 if self.last_only else n - 1]

    def decode(self, token: int) -> np.ndarray:
        """One token at the current position -> logits (V,)."""
        if self.pos >= self.capacity:
            raise ValueError(f"KV cache full ({self.capacity} tokens): rebuild with a larger capacity")
        y = self._run("decode", np.array([token], np.int64), np.array([self.pos]))[0]
        self.pos += 1
        return y


Runtime = LiteRTRuntime
