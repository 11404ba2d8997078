#!/usr/bin/env python3
"""litelm-edge device runner: benchmark one built artifact where it runs.

The runner core, needing only python3, numpy and the artifact's runtime (no litelm_edge import).
It runs with devices/facts.py, manifest.py (opens only listed, hashed files) and the manifest's
backends/<backend>/runtime.py, at these paths under litelm_edge/ here and runner/<hash>/ on a device.

    python3 devices/runner.py ARTIFACT_DIR --out result.json [--reps 5] [--warmup 2]

Protocol (llama-bench style): load, on-device parity against the manifest's reference logits,
then `warmup` untimed rounds and `reps` timed rounds of: prefill of a `prompt_len` prompt
(`iters` samples a round), decode of `gen_len` tokens with the KV cache, and `concurrency`
sessions prefilling in parallel (QPS). Exit 0 ok, 2 bad artifact or protocol, 3 no runtime, 4 parity failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

try:
    import numpy as np
except ImportError:  # main() reports it with the install command (exit 3)
    np = None

ROOT = Path(__file__).resolve().parents[1]  # litelm_edge/ here, runner/<hash>/ on a device
try:  # in the litelm_edge package (the build flow, eval), or a script beside facts.py (bench)
    from . import facts
    from .. import manifest as mf
except ImportError:
    import facts
    _spec = importlib.util.spec_from_file_location("litelm_manifest", ROOT / "manifest.py")
    _spec.loader.exec_module(mf := importlib.util.module_from_spec(_spec))  # alone: its own UserError

SCHEMA = "litelm-edge-bench/1"
# Exit codes, defined once (the host's CLI and transport import them): 2 a bad input, 3 a device or
# transport fault (here: the runtime is missing), 4 on-device parity failed.
EXIT_USER, EXIT_DEVICE, EXIT_PARITY, EXIT_RUNTIME_MISSING = 2, 3, 4, 3  # a missing runtime: a device fault
SCRIPT = "devices/runner.py"  # this file
FILES = (SCRIPT, "devices/facts.py", "manifest.py")  # the core a device receives, with a runtime


@dataclasses.dataclass
class Protocol:
    """The bench protocol's defaults, owned here: the CLI, the runner, the benchmarks, a recipe's
    [bench] (flows/recipe.BenchStep), CI jobs (flows/ci.PROTOCOL) and the tuner read them."""
    warmup: int = 2  # untimed rounds before the timed ones
    reps: int = 5  # timed rounds
    iters: int = 10  # prefills a round
    prompt_len: int = 64  # tokens of the timed prompt
    gen_len: int = 128  # tokens decoded a round
    concurrency: int = 4  # sessions of the QPS figure
    qps_iters: int = 5  # prefills each session runs for QPS
    threads: int | None = None  # runtime threads a session; None = chosen (choose_threads)
    spin: int | None = None  # 1: idle workers spin, 0: they sleep; None = chosen (choose_spin)

    def check(self, max_seq_len: int | None = None) -> Protocol:
        """Each value in range (named as its option), prompt + decode within the positions: else exit 2."""
        for f in dataclasses.fields(self):
            v, lo = getattr(self, f.name), {"warmup": 0, "spin": 0}.get(f.name, 1)
            if v is not None and (type(v) is not int or v < lo or (f.name == "spin" and v > 1)):
                raise mf.UserError(f"--{f.name.replace('_', '-')} must be an integer >= {lo}"
                                   f"{' and <= 1' if f.name == 'spin' else ''}, got {v!r}")
        if max_seq_len and self.prompt_len + self.gen_len > max_seq_len:
            raise mf.UserError(f"--prompt-len {self.prompt_len} + --gen-len {self.gen_len} exceed the model's "
                               f"{max_seq_len} positions: lower them so they sum to at most {max_seq_len}")
        return self


class RuntimeMissing(Exception):
    """The runtime (or numpy) is not importable; `packages` is what --install-runtime installs."""
    def __init__(self, msg: str, packages: list[str] | tuple = ()):
        super().__init__(msg)
        self.packages = list(packages)


def log(msg: str):
    print(f"[runner] {msg}", file=sys.stderr, flush=True)


# --- Runtimes: backends/<backend>/runtime.py under ROOT, loaded by path (the same on a device).

PIP = "python3 -m pip install "
_RUNTIMES: dict = {}


def runtime_file(backend: str) -> str:
    """The runtime's path relative to ROOT (the name it gets on a device)."""
    return f"backends/{backend}/runtime.py"


def runtime_module(backend: str):
    if backend not in _RUNTIMES:
        path = ROOT / runtime_file(backend)
        if not path.is_file():
            raise RuntimeMissing(f"backend '{backend}' has no runtime beside this runner ({path}): "
                                 "push the runner again, or rebuild with a known backend")
        spec = importlib.util.spec_from_file_location(f"litelm_runtime_{backend}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _RUNTIMES[backend] = mod
    return _RUNTIMES[backend]


affinity, cpu_list = facts.affinity, facts.cpu_list  # the CPUs this process may run on; '0-2,5'


def open_runtime(art_dir, manifest: dict, threads: int | None = None, spin: bool | None = None):
    """The artifact's runtime: prefill(ids (T,)) -> logits (T, V); decode(token) -> logits (V,).
    spin: idle workers spin or sleep, for runtimes that take it (Runtime.spins)."""
    mod = runtime_module(manifest["backend"])
    graph = mf.graph_path(art_dir, manifest, mod.GRAPH)  # listed, inside, its sha256: else exit 2
    try:
        kw = {"spin": spin} if mod.Runtime.spins else {}
        return mod.Runtime(graph, manifest, threads or choose_threads(manifest), **kw)
    except ImportError as e:
        why = f"{e.name or manifest['runtime']} is not installed: {PIP}{' '.join(mod.PACKAGES)}"
        raise RuntimeMissing(why + getattr(mod, "INSTALL_NOTE", ""), mod.PACKAGES) from e
    except ValueError as e:  # a manifest the runtime cannot run (tvm: an unknown cache layout): one line
        raise mf.UserError(str(e)) from e


def runtime_version(backend: str) -> str:
    try:
        return getattr(__import__(runtime_module(backend).MODULE), "__version__", "unknown")
    except Exception:
        return "unknown"


# ----------------------------------------------------------------------------------------------
# Parity: the fixed prompt of the manifest, teacher-forced through prefill + decode.

def check_parity(rt, reference: dict, tol: dict) -> dict:
    """Compare logits with the build host's (same artifact) and greedy tokens with torch's."""
    prompt = np.array(reference["prompt_ids"], np.int64)
    forced = reference["torch_greedy"]  # torch's greedy continuation, fed back step by step
    logits = [prefill_last(rt, prompt)]
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


def prefill_last(rt, ids) -> np.ndarray:
    """Serving's prefill: only the last position's logits (V,), where the runtime can skip the rest."""
    return rt.prefill_last(ids) if hasattr(rt, "prefill_last") else rt.prefill(ids)[-1]


def time_prefill(rt, prompt, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        prefill_last(rt, prompt)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def time_decode(rt, prompt, gen_len: int) -> list[float]:
    """ms per token of a greedy decode of gen_len tokens after the prompt."""
    tok = int(prefill_last(rt, prompt).argmax())
    out = []
    for _ in range(gen_len):
        t0 = time.perf_counter()
        tok = int(rt.decode(tok).argmax())
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def round_ms(rt, ids, reps: int, steps: int) -> dict:
    """One round of the benchmarks/ scripts, with this protocol's timers: 1 warmup prefill, `reps`
    timed prefills of ids, then a greedy decode of `steps` tokens after them (ms each)."""
    prefill_last(rt, ids)
    return {"prefill_ms": time_prefill(rt, ids, reps), "decode_ms": time_decode(rt, ids, steps)}


def run_qps(runtimes: list, prompt, iters: int) -> dict:
    """Each session prefills `iters` times in its own thread; QPS = all inferences / wall."""
    errors = []

    def work(rt):
        try:
            for _ in range(iters):
                prefill_last(rt, prompt)
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
# Threads: chosen, not left to the runtime (ORT's default of one thread per core, times 4 sessions,
# oversubscribes 2 cores 4x). Small models lose more to thread hand-offs than they gain from a
# second core: about MB_PER_THREAD of weights read per token per thread pays for one more thread.
MB_PER_THREAD = 8.0


def choose_threads(manifest: dict, sessions: int = 1) -> int:
    """Runtime threads per session when --threads is not given: the CPUs in this process's affinity
    (a runtime's own default counts every core and ignores taskset), shared by the sessions, at
    most one per MB_PER_THREAD of stored weights and no more than the build's settings ask for
    (the runtime's default_threads(manifest), e.g. LiteRT's: the phone's big cores)."""
    share = max(1, len(affinity()) // sessions)
    by_size = max(1, int(manifest.get("size_bytes", 0) / 1e6 // MB_PER_THREAD))
    return min(share, by_size, runtime_module(manifest["backend"]).default_threads(manifest) or share)


def choose_spin(threads: int, sessions: int = 1) -> bool:
    """Spinning workers only when the cores are ours: one session and a load below the CPU count."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return threads > 1 and sessions == 1 and load < len(affinity())


def thread_plan(manifest: dict, threads: int | None, spin: bool | None, concurrency: int) -> dict:
    """Threads and spinning for the single stream and for each of the concurrent sessions."""
    one = threads or choose_threads(manifest)
    each = threads or choose_threads(manifest, concurrency)
    return {"threads": one, "qps_threads_per_session": each,
            "threads_from": "--threads" if threads else "default: the CPUs in the process's affinity",
            "chosen_by": "--threads" if threads else
            f"CPU affinity ({len(affinity())} CPUs) and weights ({MB_PER_THREAD:g} MB a thread)",
            "spin": choose_spin(one) if spin is None else spin,
            "qps_spin": choose_spin(each, concurrency) if spin is None else spin,
            "affinity": affinity(), "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


# ----------------------------------------------------------------------------------------------

def bench(art_dir: Path, p: Protocol = Protocol(), sysfs_root: str = "/sys") -> dict:
    """The protocol on one artifact; sysfs_root: where the energy meter and temperatures read."""
    manifest = mf.verified(art_dir)  # its id, then every file's sha256: before anything loads
    p.check(manifest["model"]["max_seq_len"])
    plan = thread_plan(manifest, p.threads, None if p.spin is None else bool(p.spin), p.concurrency)
    log(f"threads {plan['threads']} (QPS: {plan['qps_threads_per_session']} per session), spin {plan['spin']}, "
        f"chosen by {plan['chosen_by']}")
    with Span() as sp_load:
        rt = open_runtime(art_dir, manifest, plan["threads"], plan["spin"])
    log(f"loaded {manifest['runtime']} artifact in {sp_load.wall_s * 1e3:.0f} ms")
    parity = check_parity(rt, manifest["reference"], manifest["parity"]["on_device_tolerance"])
    log(f"parity: top-1 {parity['top1_agreement_vs_torch']:.3f}, max abs {parity['max_abs_err_vs_host']:.2e}")
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, manifest["model"]["vocab_size"], p.prompt_len, dtype=np.int64)
    for _ in range(p.warmup):
        time_prefill(rt, prompt, 1)
        time_decode(rt, prompt, min(p.gen_len, 8))
    prefill, decode = [], []
    meter, temp0 = facts.EnergyMeter(sysfs_root), facts.temperatures(sysfs_root)
    meter.start()
    with Span() as sp_pre:
        for _ in range(p.reps):
            prefill += time_prefill(rt, prompt, p.iters)
    e_pre = meter.stop()
    meter.start()
    with Span() as sp_dec:
        for r in range(p.reps):
            decode += time_decode(rt, prompt, p.gen_len)
            log(f"rep {r + 1}/{p.reps}: decode {1e3 / np.mean(decode[-p.gen_len:]):.1f} tok/s")
    e_dec = meter.stop()
    sessions = [open_runtime(art_dir, manifest, plan["qps_threads_per_session"], plan["qps_spin"])
                for _ in range(p.concurrency)]
    run_qps(sessions, prompt, 1)  # warmup
    qps = run_qps(sessions, prompt, p.qps_iters)
    dec_tok_s = [1e3 / np.mean(decode[i:i + p.gen_len]) for i in range(0, len(decode), p.gen_len)]
    return {
        "schema": SCHEMA, "artifact": {k: manifest.get(k) for k in ("target", "backend", "runtime", "precision", "artifact_id")},
        "runtime_version": runtime_version(manifest["backend"]),
        "device": dict(facts.device_facts(sysfs_root=sysfs_root), affinity=cpu_list(affinity()),
                       affinity_cpus=len(affinity())),
        "protocol": dict(dataclasses.asdict(p), **plan),
        "load_ms": sp_load.wall_s * 1e3, "parity": parity,
        "prefill_ms": dict(stats(prefill), samples=prefill, cpu_s=sp_pre.cpu_s, wall_s=sp_pre.wall_s),
        "decode_ms_per_token": dict(stats(decode), samples=decode, cpu_s=sp_dec.cpu_s, wall_s=sp_dec.wall_s),
        "decode_tok_s": stats(dec_tok_s), "qps": qps,
        "peak_rss_mb": facts.peak_rss_mb(),
        "energy": facts.energy_record(meter, e_pre, e_dec),
        "thermal": {"start_c": temp0, "end_c": facts.temperatures(sysfs_root), "throttling": facts.throttling()},
    }


# ----------------------------------------------------------------------------------------------
# A missing runtime: say how to install it, or (--install-runtime) install it into the runner's
# venv (system site-packages stay visible, so a distro numpy is reused). A runner started outside
# that venv re-executes itself inside it when it exists, so later runs need no flag.

VENV = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                    "litelm-edge", "venv")


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
    if install and e.packages:
        try:
            install_runtime(e.packages)  # the runtime's PACKAGES, or numpy
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
    for f in dataclasses.fields(Protocol):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default)
    ap.add_argument("--sysfs-root", default="/sys", help="where the energy sensors are read (tests: a fake tree)")
    ap.add_argument("--install-runtime", action="store_true",
                    help="install a missing runtime into a venv under ~/.cache/litelm-edge")
    a = ap.parse_args(argv)
    try:
        if np is None:
            raise RuntimeMissing(f"numpy is not installed: {PIP}numpy", ["numpy"])
        proto = Protocol(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Protocol)})
        res = bench(a.artifact, proto, a.sysfs_root)
    except RuntimeMissing as e:
        return runtime_missing(e, argv, a.install_runtime)
    except mf.UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER
    tmp = a.out.with_name(a.out.name + ".tmp")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, a.out)
    if not res["parity"]["ok"]:
        print(f"error: on-device parity failed: {res['parity']}", file=sys.stderr)
        return EXIT_PARITY
    return 0


if __name__ == "__main__":
    sys.exit(main())
