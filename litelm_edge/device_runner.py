#!/usr/bin/env python3
"""litelm-edge device runner: benchmark one built artifact where it runs.

One file, needing only python3, numpy and the artifact's runtime (no litelm_edge import), so the
same file runs on this machine (the local bench) and is uploaded to a device (the remote bench).

    python3 device_runner.py ARTIFACT_DIR --out result.json [--reps 5] [--warmup 2]

Protocol (llama-bench style): load, on-device parity against the manifest's reference logits,
then `warmup` untimed rounds and `reps` timed rounds of: prefill of a `prompt_len` prompt
(`iters` samples a round), decode of `gen_len` tokens with the KV cache, and `concurrency`
sessions prefilling in parallel (QPS). Exit 0 ok, 3 runtime missing, 4 parity failed.
It stays one file, past the ~300-line guide, because a device receives exactly this file.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

try:
    import numpy as np
except ImportError:  # main() reports it with the install command (exit 3)
    np = None

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


class TvmRuntime:
    """Apache TVM: the Relax VM library `model.so`, one function `forward(idx, k, v)` serving
    prefill (empty cache) and decode (T = 1). TVM_USE_RUNTIME_LIB=1 loads only libtvm_runtime.so
    (3 MB), never the 250 MB compiler; the cache stays a TVM tensor between decode steps."""
    install_hint = ("python3 -m pip install numpy apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post0 "
                    "(aarch64 and x86_64 wheels; only its runtime library is loaded)")

    def __init__(self, art_dir: Path, manifest: dict, threads: int | None):
        os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
        if threads:
            os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool starts
        try:
            import tvm
            from tvm.runtime import vm as tvm_vm
        except ImportError as e:
            raise RuntimeMissing(f"apache-tvm is not installed: {self.install_hint}") from e
        meta = manifest["tvm"]
        self.tensor = tvm.runtime.tensor
        lib = tvm.runtime.load_module(str(Path(art_dir) / meta["library"]))
        self.fn = tvm_vm.VirtualMachine(lib, tvm.cpu())[meta.get("entry", "forward")]
        self.empty = np.zeros(meta["cache_shape"], np.float32)  # (n_layer, 1, n_kv_head, 0, hd)
        self.k = self.v = None

    def _run(self, ids: np.ndarray) -> np.ndarray:
        logits, self.k, self.v = self.fn(self.tensor(np.asarray(ids, np.int64).reshape(1, -1)), self.k, self.v)
        return logits.numpy()[0]  # (T, V)

    def prefill(self, ids):
        self.k, self.v = self.tensor(self.empty), self.tensor(self.empty)
        return self._run(ids)

    def decode(self, token):
        return self._run(np.array([token], np.int64))[0]


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


class _InterpreterCaches:
    """Caches through numpy: the classic Interpreter's signature runner copies every input in and
    every output out (tflite_runtime and ai_edge_litert without CompiledModel)."""

    def __init__(self, it, details: dict):
        self.sig = {s: it.get_signature_runner(s) for s in details}
        self.details, self.names, self.cache = details, None, {}

    def reset(self, names: list, zeros: dict):
        self.names, self.cache = names, dict(zeros)

    def run(self, sig: str, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        out = self.sig[sig](tokens=tokens[None], input_pos=positions, **self.cache)
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
        opts = Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=threads))
        self.cm = CompiledModel.from_file(str(path), options=opts)
        self.details, self.cache = details, {}
        self.io = {s: (self.cm.create_input_buffer_by_name(s, "tokens"),
                       self.cm.create_input_buffer_by_name(s, "input_pos"),
                       self.cm.create_output_buffer_by_name(s, "logits")) for s in details}

    def reset(self, names: list, zeros: dict):
        if not self.cache:
            sig = next(iter(self.details))
            self.cache = {n: self.cm.create_input_buffer_by_name(sig, n) for n in names}
        for n, z in zeros.items():
            self.cache[n].write(z)

    def run(self, sig: str, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        tok, pos, logits = self.io[sig]
        tok.write(tokens[None])
        pos.write(positions)
        self.cm.run_by_name(sig, {"tokens": tok, "input_pos": pos, **self.cache}, {"logits": logits, **self.cache})
        d = self.details[sig][1]["logits"]
        return logits.read(int(np.prod(d["shape"])), d["dtype"]).reshape(d["shape"])


def _compiled_model_available() -> bool:
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
    exists, else it travels through numpy. Full-integer INT8 models have int8 inputs/outputs:
    values are (de)quantized with each tensor's scale and zero point, so callers always see
    float32 logits."""
    install_hint = "pip install ai-edge-litert  (Linux/Android-Termux arm64 and x86_64 wheels on PyPI)"

    def __init__(self, art_dir: Path, manifest: dict, threads: int | None):
        Interpreter, self.runtime_name = _interpreter_class()
        path = Path(art_dir) / manifest.get("graphs", {}).get("model", "model.tflite")
        threads = threads or manifest.get("threads") or 1
        it = Interpreter(model_path=str(path), num_threads=threads)
        details = {}
        for s in it.get_signature_list():
            r = it.get_signature_runner(s)
            details[s] = ({d: v for d, v in r.get_input_details().items()}, r.get_output_details())
        first = details[next(s for s in details if s.startswith("prefill"))][0]
        self.cache_names = sorted(n for n in first if n[:2] in ("k_", "v_"))
        self.prefill_len = int(first["tokens"]["shape"][1])
        self.capacity = int(first[self.cache_names[0]]["shape"][2])
        self.windows = {kind: sorted((int(s.partition("_")[2] or self.capacity), s) for s in details
                                     if s.partition("_")[0] == kind) for kind in ("prefill", "decode")}
        in_place = self.runtime_name == "ai_edge_litert" and _compiled_model_available()
        self.engine = _CompiledCaches(path, threads, details) if in_place else _InterpreterCaches(it, details)
        self.cache_in_place = in_place
        self.details, self.pos = details, 0

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

    def _signature(self, kind: str, last: int) -> str:
        """The smallest window of `kind` that holds position `last`."""
        return next(s for w, s in self.windows[kind] if last < w)

    def _run(self, kind: str, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        sig = self._signature(kind, int(positions[-1]))
        ins, outs = self.details[sig]
        y = self.engine.run(sig, tokens.astype(ins["tokens"]["dtype"]), positions.astype(ins["input_pos"]["dtype"]))
        return self._from(outs["logits"], y)[0]  # (T, V)

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """ids (T,) int64 -> logits (T, V) float32; resets the cache, runs in prefill_len chunks."""
        ids = np.asarray(ids, np.int64)
        if len(ids) > self.capacity:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the cache capacity {self.capacity}: "
                             "rebuild with a larger --set litert.capacity")
        ins = next(iter(self.details.values()))[0]
        self.engine.reset(self.cache_names, {n: self._to(ins[n], np.zeros(ins[n]["shape"], np.float32))
                                             for n in self.cache_names})
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


RUNTIMES = {"onnxruntime": OrtRuntime, "litert": LiteRTRuntime, "tvm": TvmRuntime}


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
# Device facts and energy meters, read from /proc, /etc and /sys. Every reader takes a root folder
# so the tests use fake trees. Energy: RAPL (powercap intel-rapl:N/energy_uj, µJ counters) or hwmon
# sensors (energy*_input µJ counters; power*_input µW, or INA3221 in*_input mV x curr*_input mA,
# sampled and integrated); none exposed -> the host estimates with the target's power model.

ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55",
             "0xd07": "Cortex-A57", "0xd08": "Cortex-A72", "0xd09": "Cortex-A73",
             "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0d": "Cortex-A77",
             "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510"}
THROTTLE_BITS = {0: "under-voltage", 1: "arm-freq-capped", 2: "throttled", 3: "soft-temp-limit",
                 16: "under-voltage-occurred", 17: "arm-freq-capped-occurred",
                 18: "throttled-occurred", 19: "soft-temp-limit-occurred"}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def cpu_facts(root: str = "/") -> dict:
    """CPU model and core count from /proc/cpuinfo (x86 'model name', Pi 'Model', ARM parts)."""
    text = _read(os.path.join(root, "proc/cpuinfo")) or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        fields.setdefault(k.strip(), v.strip())
    parts = sorted({ARM_PARTS.get(p, p) for p in re.findall(r"CPU part\s*:\s*(\S+)", text)})
    model = fields.get("model name") or (parts and " + ".join(parts)) or fields.get("Hardware")
    cores = len(re.findall(r"^processor\s*:", text, re.M)) or os.cpu_count()
    return {"cpu_model": model or platform.processor() or "unknown", "cores": cores,
            "board": fields.get("Model"), "arch": platform.machine()}


def mem_total_mb(root: str = "/") -> float | None:
    m = re.search(r"MemTotal:\s*(\d+)\s*kB", _read(os.path.join(root, "proc/meminfo")) or "")
    return round(int(m.group(1)) / 1024, 1) if m else None


def os_name(root: str = "/") -> str:
    text = _read(os.path.join(root, "etc/os-release")) or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else platform.system()


def temperatures(sysfs_root: str = "/sys") -> dict[str, float]:
    """°C per thermal zone, keyed by zone type (x86_pkg_temp, cpu-thermal, ...)."""
    out = {}
    for zone in sorted(glob.glob(os.path.join(sysfs_root, "class/thermal/thermal_zone*"))):
        milli = _int(os.path.join(zone, "temp"))
        if milli is not None:
            name = _read(os.path.join(zone, "type")) or os.path.basename(zone)
            out[name if name not in out else os.path.basename(zone)] = milli / 1000.0
    return out


def cpufreq(sysfs_root: str = "/sys") -> dict:
    base = os.path.join(sysfs_root, "devices/system/cpu/cpu0/cpufreq")
    cur, top = _int(base + "/scaling_cur_freq"), _int(base + "/cpuinfo_max_freq")
    return {"governor": _read(base + "/scaling_governor"),
            "cur_mhz": cur // 1000 if cur else None, "max_mhz": top // 1000 if top else None}


def decode_throttled(text: str) -> dict:
    """'throttled=0x50005' (vcgencmd get_throttled) -> {'raw': '0x50005', 'flags': [...]}."""
    m = re.search(r"0x[0-9a-fA-F]+", text or "")
    if not m:
        return {"raw": text, "flags": []}
    value = int(m.group(0), 16)
    return {"raw": m.group(0), "flags": [n for b, n in THROTTLE_BITS.items() if value >> b & 1]}


def throttling() -> dict | None:
    """Raspberry Pi firmware throttling flags, when vcgencmd is installed."""
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return decode_throttled(out.stdout) if out.returncode == 0 else None


def probe_facts(root: str = "/", sysfs_root: str = "/sys") -> dict:
    return {**cpu_facts(root), "mem_total_mb": mem_total_mb(root), "os": os_name(root),
            "kernel": platform.release(), "temperatures_c": temperatures(sysfs_root),
            "cpufreq": cpufreq(sysfs_root), "throttling": throttling()}


def _rapl(sysfs_root: str) -> tuple[list, str | None]:
    """Top-level RAPL zones as (label, energy_uj path, wrap µJ); packages only when present."""
    zones = [z for z in sorted(glob.glob(os.path.join(sysfs_root, "class/powercap/intel-rapl:*")))
             if re.search(r"intel-rapl:\d+$", z)]
    found = [((_read(z + "/name") or os.path.basename(z)), z + "/energy_uj",
              _int(z + "/max_energy_range_uj") or 2**32) for z in zones]
    readable = [f for f in found if _int(f[1]) is not None]
    if found and not readable:
        return [], "RAPL present but energy_uj is not readable (root only): run the bench as root"
    packages = [f for f in readable if f[0].startswith("package")]
    return packages or readable, None


def _hwmon(sysfs_root: str) -> tuple[list, list]:
    """hwmon energy counters (label, path, wrap) and power readers (label, [paths], scale)."""
    counters, powers = [], []
    for d in sorted(glob.glob(os.path.join(sysfs_root, "class/hwmon/hwmon*"))):
        chip = _read(d + "/name") or os.path.basename(d)
        for p in sorted(glob.glob(d + "/energy*_input")):
            if _int(p) is not None:
                counters.append((f"{chip}/{os.path.basename(p)[:-6]}", p, 2**64))
        pw = [p for p in sorted(glob.glob(d + "/power*_input")) if _int(p) is not None]
        powers += [(f"{chip}/{os.path.basename(p)[:-6]}", [p], 1) for p in pw]
        if not pw:  # INA3221: bus mV x current mA = µW per channel
            for v in sorted(glob.glob(d + "/in*_input")):
                c = d + "/curr" + os.path.basename(v)[2:]
                if os.path.exists(c) and _int(v) is not None and _int(c) is not None:
                    powers.append((f"{chip}/ch{os.path.basename(v)[2:-6]}", [v, c], 1))
    return counters, powers


class EnergyMeter:
    """Measured energy between start() and stop(); `source` is None when nothing is exposed."""

    def __init__(self, sysfs_root: str = "/sys", period: float = 0.05):
        self.period = period  # s between power samples
        self.counters, self.note = _rapl(sysfs_root)
        kind = "rapl"
        hw_counters, self.powers = _hwmon(sysfs_root)
        if not self.counters and hw_counters:
            self.counters, kind = hw_counters, "hwmon"
        if self.counters:
            self.powers = []
        elif self.powers:
            kind = "hwmon"
        labels = [c[0] for c in self.counters] + [p[0] for p in self.powers]
        self.source = f"{kind}:{'+'.join(labels)}" if labels else None
        self._thread = None

    def _power_uw(self) -> float:
        total = 0.0
        for _, paths, _ in self.powers:
            vals = [_int(p) or 0 for p in paths]
            total += vals[0] if len(vals) == 1 else vals[0] * vals[1]
        return total

    def _sample(self):
        prev_t, prev_p = self._t0, self._power_uw()
        while not self._stop.wait(self.period):
            t, p = time.perf_counter(), self._power_uw()
            self._uj += (p + prev_p) / 2 * (t - prev_t)  # trapezoid, µW x s = µJ
            prev_t, prev_p = t, p
        t, p = time.perf_counter(), self._power_uw()
        self._uj += (p + prev_p) / 2 * (t - prev_t)
        self._t_end = t

    def start(self):
        self._t0 = time.perf_counter()
        self._start = [_int(c[1]) or 0 for c in self.counters]
        self._uj, self._stop = 0.0, threading.Event()
        if self.powers:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def stop(self) -> dict | None:
        """{'joules', 'seconds', 'mean_watts', 'source', 'method': 'measured'} or None."""
        if self.source is None:
            return None
        if self._thread:
            self._stop.set()
            self._thread.join()
        seconds = (self._t_end if self._thread else time.perf_counter()) - self._t0
        for (_, path, wrap), s in zip(self.counters, self._start):
            e = _int(path) or 0
            self._uj += e - s if e >= s else e + wrap - s  # the counter wrapped once
        joules = self._uj / 1e6
        return {"joules": joules, "seconds": seconds, "mean_watts": joules / seconds if seconds
                else None, "source": self.source, "method": "measured"}


def emulated() -> bool:
    """Running under qemu-user (timings are then no speed claim): the kernel's CPU is another
    architecture (an x86 /proc/cpuinfo under an aarch64 python), or a qemu binfmt handler is
    registered for this very architecture (a board never registers one for itself)."""
    machine = platform.machine()
    if Path(f"/proc/sys/fs/binfmt_misc/qemu-{machine}").exists():
        return True
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    x86_kernel = "GenuineIntel" in cpuinfo or "AuthenticAMD" in cpuinfo
    return x86_kernel != (machine in ("x86_64", "i686", "i386"))


def peak_rss_mb() -> float:
    """This process's memory high-water mark. VmHWM belongs to the address space made at exec;
    ru_maxrss can carry the forking parent's peak (a torch process for the local bench)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_facts() -> dict:
    """The keys the report prints (cpu, cores, machine, os, mem_gb) plus the probe's details."""
    f = probe_facts()
    return {**f, "cpu": f["cpu_model"], "machine": platform.machine(), "emulated": emulated(),
            "system": platform.system(),
            "release": platform.release(), "python": platform.python_version(),
            "numpy": np.__version__, "mem_gb": round((f["mem_total_mb"] or 0) / 1024, 2)}


def energy_record(meter, pre: dict | None, dec: dict | None) -> dict:
    """Joules of the timed prefill and decode phases when a sensor exists (the host else estimates)."""
    return {"prefill_j": pre and pre["joules"], "decode_j": dec and dec["joules"],
            "sensor": meter.source, "prefill": pre, "decode": dec,
            "note": meter.note or (None if meter.source else "no RAPL or hwmon power sensor")}


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
    meter, temp0 = EnergyMeter(), temperatures()
    meter.start()
    with Span() as sp_pre:
        for r in range(reps):
            prefill += time_prefill(rt, prompt, iters)
    e_pre = meter.stop()
    meter.start()
    with Span() as sp_dec:
        for r in range(reps):
            decode += time_decode(rt, prompt, gen_len)
            log(f"rep {r + 1}/{reps}: decode {1e3 / np.mean(decode[-gen_len:]):.1f} tok/s")
    e_dec = meter.stop()
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
        "peak_rss_mb": peak_rss_mb(),
        "energy": energy_record(meter, e_pre, e_dec),
        "thermal": {"start_c": temp0, "end_c": temperatures(), "throttling": throttling()},
    }


# ----------------------------------------------------------------------------------------------
# A missing runtime: say how to install it, or (--install-runtime) install it into the runner's
# venv (system site-packages stay visible, so a distro numpy is reused). A runner started outside
# that venv re-executes itself inside it when it exists, so later runs need no flag.

VENV = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                    "litelm-edge", "venv")
PIP = "python3 -m pip install "


def _venv_python() -> str:
    return os.path.join(VENV, "bin", "python")


def install_runtime(packages: list[str]):
    if not os.path.exists(_venv_python()):
        log(f"creating {VENV}")
        r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", VENV],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeMissing(f"cannot create a venv at {VENV}: install python3-venv "
                                 f"({(r.stderr.strip().splitlines() or ['?'])[-1]})")
    log(f"installing {' '.join(packages)} into {VENV}")
    r = subprocess.run([_venv_python(), "-m", "pip", "install", "-q", *packages],
                       capture_output=True, text=True)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise RuntimeMissing(f"pip install {' '.join(packages)} into {VENV} failed: {last}")


def runtime_missing(e: RuntimeMissing, argv: list[str], install: bool) -> int:
    """Use (or with --install-runtime, make) the runner's venv; else print the install line."""
    here = os.path.realpath(sys.prefix) == os.path.realpath(VENV)
    rerun = [_venv_python(), os.path.abspath(__file__), *[a for a in argv if a != "--install-runtime"]]
    if not here and os.path.exists(_venv_python()) and not install:
        log(f"runtime not in {sys.executable}: running in {VENV}")
        os.execv(rerun[0], rerun)
    if install and PIP in str(e):
        try:
            install_runtime(str(e).split(PIP, 1)[1].split())
        except RuntimeMissing as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_RUNTIME_MISSING
        os.execv(rerun[0], rerun)
    print(f"error: {e}", file=sys.stderr)
    return EXIT_RUNTIME_MISSING


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    for name, default in [("warmup", 2), ("reps", 5), ("iters", 10), ("prompt-len", 64), ("gen-len", 128),
                          ("concurrency", 4), ("qps-iters", 5)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--install-runtime", action="store_true",
                    help="install a missing runtime into a venv under ~/.cache/litelm-edge")
    a = ap.parse_args(argv)
    try:
        if np is None:
            raise RuntimeMissing(f"numpy is not installed: {PIP}numpy")
        res = bench(a.artifact, a.warmup, a.reps, a.iters, a.prompt_len, a.gen_len, a.concurrency, a.threads, a.qps_iters)
    except RuntimeMissing as e:
        return runtime_missing(e, argv, a.install_runtime)
    tmp = a.out.with_name(a.out.name + ".tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, a.out)
    if not res["parity"]["ok"]:
        print(f"error: on-device parity failed: {res['parity']}", file=sys.stderr)
        return EXIT_PARITY
    return 0


if __name__ == "__main__":
    sys.exit(main())
