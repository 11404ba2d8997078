#!/usr/bin/env python3
"""litelm-edge device runner: benchmark one built artifact where it runs.

One file, needing only python3, numpy and the artifact's runtime (no litelm_edge import), so the
same file runs on this machine (the local bench) and is uploaded to a device (the remote bench).

    python3 device_runner.py ARTIFACT_DIR --out result.json [--reps 5] [--warmup 2]

Protocol (llama-bench style): load, on-device parity against the manifest's reference logits,
then `warmup` untimed rounds and `reps` timed rounds of: prefill of a `prompt_len` prompt
(`iters` samples a round), decode of `gen_len` tokens with the KV cache, and `concurrency`
sessions prefilling in parallel (QPS). Exit 0 ok, 3 runtime missing, 4 parity failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

SCHEMA = "litelm-edge-bench/1"
EXIT_RUNTIME_MISSING, EXIT_PARITY = 3, 4


class RuntimeMissing(Exception):
    pass


def log(msg: str):
    print(f"[runner] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Runtimes: one class each, found by the manifest's "runtime" key.
# API: prefill(ids int64 (T,)) -> logits float32 (T, V), resetting and filling the KV cache;
#      decode(token int) -> logits (V,), appending one position to the cache.

class OrtRuntime:
    install_hint = "python3 -m pip install onnxruntime numpy"

    def __init__(self, art_dir: Path, manifest: dict, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise RuntimeMissing(f"onnxruntime is not installed: {self.install_hint}") from e
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0  # 0 = ORT's default (all cores)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        path = str(Path(art_dir) / manifest["graphs"]["decoder"])
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        m = manifest["model"]
        self.empty = np.zeros((m["n_layer"], 1, m["n_kv_head"], 0, m["n_embd"] // m["n_head"]), np.float32)
        self.k = self.v = self.empty

    def _run(self, ids: np.ndarray, k, v):
        return self.sess.run(None, {"input_ids": ids.reshape(1, -1).astype(np.int64), "past_k": k, "past_v": v})

    def prefill(self, ids):
        logits, self.k, self.v = self._run(ids, self.empty, self.empty)
        return logits[0]

    def decode(self, token):
        logits, self.k, self.v = self._run(np.array([token]), self.k, self.v)
        return logits[0, -1]


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
        raise RuntimeMissing(f"ai_edge_litert is not installed: {LiteRTRuntime.install_hint}") from e
    log(TFLITE_RUNTIME_WARNING)
    return Interpreter, "tflite_runtime"


class LiteRTRuntime:
    """model.tflite with prefill/decode signatures that take the KV cache in and hand it back.
    Full-integer INT8 models have int8 inputs/outputs: values are (de)quantized with each tensor's
    scale and zero point, so callers always see float32 logits."""
    install_hint = "pip install ai-edge-litert  (Linux/Android-Termux arm64 and x86_64 wheels on PyPI)"

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


RUNTIMES = {"onnxruntime": OrtRuntime, "litert": LiteRTRuntime}


def open_runtime(art_dir, manifest: dict, threads: int | None = None):
    name = manifest["runtime"]
    if name not in RUNTIMES:
        raise RuntimeMissing(f"runtime '{name}' unknown to this runner, have: {', '.join(RUNTIMES)}")
    return RUNTIMES[name](Path(art_dir), manifest, threads)


# ----------------------------------------------------------------------------------------------
# Parity: the fixed prompt of the manifest, teacher-forced through prefill + decode.

def check_parity(rt, reference: dict, tol: dict) -> dict:
    """Compare logits with the build host's (same artifact) and greedy tokens with torch's."""
    prompt = np.array(reference["prompt_ids"], np.int64)
    forced = reference["torch_greedy"]  # torch's greedy continuation, fed back step by step
    logits = [rt.prefill(prompt)[-1]]
    for tok in forced[:-1]:
        logits.append(rt.decode(int(tok)))
    logits = np.stack(logits)
    host = np.array(reference["artifact_last_logits"], np.float32)
    max_abs = float(np.abs(logits[0] - host).max())
    top1 = float(np.mean(logits.argmax(-1) == np.array(forced)))
    ok = top1 >= tol["min_top1"] and max_abs <= tol["max_abs_vs_host"]
    return {"max_abs_err_vs_host": max_abs, "top1_agreement_vs_torch": top1, "steps": len(forced),
            "tolerance": tol, "ok": bool(ok)}


# ----------------------------------------------------------------------------------------------
# Timing

def stats(samples: list[float]) -> dict:
    a = np.asarray(samples, np.float64)
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "min": float(a.min()), "max": float(a.max())}


class Span:
    """Wall and process CPU time of a measured phase (CPU time feeds the energy estimate)."""

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self.w0
        self.cpu_s = time.process_time() - self.c0


def time_prefill(rt, prompt, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        rt.prefill(prompt)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def time_decode(rt, prompt, gen_len: int) -> list[float]:
    """ms per token of a greedy decode of gen_len tokens after the prompt."""
    tok = int(rt.prefill(prompt)[-1].argmax())
    out = []
    for _ in range(gen_len):
        t0 = time.perf_counter()
        tok = int(rt.decode(tok).argmax())
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def run_qps(runtimes: list, prompt, iters: int) -> dict:
    """Each session prefills `iters` times in its own thread; QPS = all inferences / wall."""
    errors = []

    def work(rt):
        try:
            for _ in range(iters):
                rt.prefill(prompt)
        except Exception as e:  # reported below, never swallowed
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(rt,)) for rt in runtimes]
    with Span() as sp:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise RuntimeError(f"concurrent session failed: {errors[0]}")
    n = len(runtimes) * iters
    return {"sessions": len(runtimes), "inferences": n, "wall_s": sp.wall_s, "cpu_s": sp.cpu_s, "qps": n / sp.wall_s}


# ----------------------------------------------------------------------------------------------
# Device facts

def device_facts() -> dict:
    facts = {"machine": platform.machine(), "system": platform.system(), "release": platform.release(),
             "python": platform.python_version(), "numpy": np.__version__, "cores": os.cpu_count()}
    try:
        info = Path("/proc/cpuinfo").read_text()
        names = [ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.lower().startswith(("model name", "hardware", "cpu part"))]
        facts["cpu"] = names[0] if names else platform.processor()
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        facts["mem_gb"] = round(int(mem[1]) / 2**20, 2)
        osr = dict(ln.split("=", 1) for ln in Path("/etc/os-release").read_text().splitlines() if "=" in ln)
        facts["os"] = osr.get("PRETTY_NAME", "").strip('"')
    except OSError:
        pass
    return facts


def runtime_version(name: str) -> str:
    mod = {"onnxruntime": "onnxruntime", "tvm": "tvm", "litert": "ai_edge_litert"}.get(name, name)
    try:
        return getattr(__import__(mod), "__version__", "unknown")
    except Exception:
        return "unknown"


# ----------------------------------------------------------------------------------------------

def bench(art_dir: Path, warmup=2, reps=5, iters=10, prompt_len=64, gen_len=128, concurrency=4,
          threads=None, qps_iters=5) -> dict:
    manifest = json.loads((art_dir / "manifest.json").read_text())
    with Span() as sp_load:
        rt = open_runtime(art_dir, manifest, threads)
    log(f"loaded {manifest['runtime']} artifact in {sp_load.wall_s * 1e3:.0f} ms")
    parity = check_parity(rt, manifest["reference"], manifest["parity"]["on_device_tolerance"])
    log(f"parity: top-1 {parity['top1_agreement_vs_torch']:.3f}, max abs {parity['max_abs_err_vs_host']:.2e}")
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, manifest["model"]["vocab_size"], prompt_len, dtype=np.int64)
    for _ in range(warmup):
        time_prefill(rt, prompt, 1)
        time_decode(rt, prompt, min(gen_len, 8))
    prefill, decode = [], []
    with Span() as sp_pre:
        for r in range(reps):
            prefill += time_prefill(rt, prompt, iters)
    with Span() as sp_dec:
        for r in range(reps):
            decode += time_decode(rt, prompt, gen_len)
            log(f"rep {r + 1}/{reps}: decode {1e3 / np.mean(decode[-gen_len:]):.1f} tok/s")
    sessions = [rt] + [open_runtime(art_dir, manifest, threads) for _ in range(concurrency - 1)]
    run_qps(sessions, prompt, 1)  # warmup
    qps = run_qps(sessions, prompt, qps_iters)
    dec_tok_s = [1e3 / np.mean(decode[i:i + gen_len]) for i in range(0, len(decode), gen_len)]
    return {
        "schema": SCHEMA, "artifact": {k: manifest.get(k) for k in ("target", "backend", "runtime", "precision", "artifact_id")},
        "runtime_version": runtime_version(manifest["runtime"]), "device": device_facts(),
        "protocol": {"warmup": warmup, "reps": reps, "iters": iters, "prompt_len": prompt_len, "gen_len": gen_len,
                     "concurrency": concurrency, "qps_iters": qps_iters, "threads": threads},
        "load_ms": sp_load.wall_s * 1e3, "parity": parity,
        "prefill_ms": dict(stats(prefill), samples=prefill, cpu_s=sp_pre.cpu_s, wall_s=sp_pre.wall_s),
        "decode_ms_per_token": dict(stats(decode), samples=decode, cpu_s=sp_dec.cpu_s, wall_s=sp_dec.wall_s),
        "decode_tok_s": stats(dec_tok_s), "qps": qps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    for name, default in [("warmup", 2), ("reps", 5), ("iters", 10), ("prompt-len", 64), ("gen-len", 128),
                          ("concurrency", 4), ("qps-iters", 5)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        res = bench(a.artifact, a.warmup, a.reps, a.iters, a.prompt_len, a.gen_len, a.concurrency, a.threads, a.qps_iters)
    except RuntimeMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_RUNTIME_MISSING
    tmp = a.out.with_name(a.out.name + ".tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, a.out)
    if not res["parity"]["ok"]:
        print(f"error: on-device parity failed: {res['parity']}", file=sys.stderr)
        return EXIT_PARITY
    return 0


if __name__ == "__main__":
    sys.exit(main())
