"""llama.cpp as a yardstick: build it once from the PyPI sdist, convert a checkpoint, time it.

llama.cpp ships inside the sdist of `llama-cpp-python` (vendor/llama.cpp), so PyPI is the only
source needed. Everything lives under ~/.cache/litelm-edge/llama.cpp/ and is never committed:

    sdist/llama_cpp_python-VER.tar.gz             pip download --no-deps --no-binary :all:
    llama_cpp_python-VER/vendor/llama.cpp/        the unpacked source
        build/bin/llama-bench, llama-quantize     cmake -DGGML_NATIVE=ON (this CPU's ISA)
        build-no-amx/bin/...                      this CPU's ISA from /proc/cpuinfo, AMX left out

API (used by benchmarks/x86_vs_llamacpp.py and the android comparison):
    paths = ensure_built()                  -> {"root", "bench", "quantize", "convert", "version"}
    gguf  = convert(ckpt, "f32", out_dir)   our HF-layout checkpoint -> GGUF (f32, f16, q8_0)
    q     = quantize(gguf, "q4_0")          llama-quantize (q8_0, q4_0, ...)
    r     = bench(q, threads=2, p=64, n=128, reps=5)
          -> {"prefill_ms": [...], "decode_tok_s": [...], "build": ..., "threads": 2, ...}
A VM may report AMX in cpuinfo without letting a process use it: the native build's prompt processing
then dies with SIGILL on `tileloadd` (llama-bench exit -4). bench() then rebuilds without AMX (every
other ISA extension this CPU reports kept) and says which build timed each figure. The converter does not know our BPE pre-tokenizer's hash; it is mapped to "gpt-2" (byte-level BPE,
the same pre-tokenizer family) by patching the converter in the converting process only.
"""
from __future__ import annotations

import fcntl
import glob
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = os.environ.get("LITELM_LLAMA_CPP_PYTHON", "0.3.36")  # llama-cpp-python sdist version
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "litelm-edge" / "llama.cpp"
# the tools the benchmarks and tests run; their build also makes libllama.so and libggml*.so, which
# tools/setup-llamacpp.sh gives llama-cpp-python (the gguf target's runtime) in place of a second build
TARGETS = ("llama-bench", "llama-quantize", "llama-perplexity", "llama-simple", "llama-cli")

# Run in a child process: the converter is a script with global state and heavy imports.
_CONVERT = """
import runpy, sys
root = sys.argv[1]
sys.path[:0] = [root, root + "/gguf-py"]
from conversion import base
_pre = base.TextModel.get_vocab_base_pre
def pre(self, tokenizer):
    try:
        return _pre(self, tokenizer)
    except NotImplementedError:  # our byte-level BPE: not in llama.cpp's hash table
        return "gpt-2"
base.TextModel.get_vocab_base_pre = pre
sys.argv = [root + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run(cmd: list, log, **kw) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed (exit {r.returncode}):\n{tail}")
    return r.stdout


def _source(log) -> Path:
    src = CACHE / f"llama_cpp_python-{VERSION}"
    if (src / "vendor/llama.cpp/CMakeLists.txt").is_file():
        return src / "vendor/llama.cpp"
    sdist = CACHE / "sdist"
    tars = glob.glob(str(sdist / f"llama_cpp_python-{VERSION}.tar.gz"))
    if not tars:
        log(f"downloading the llama-cpp-python {VERSION} sdist from PyPI ...")
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
              "-d", sdist, f"llama-cpp-python=={VERSION}"], log)
        tars = glob.glob(str(sdist / f"llama_cpp_python-{VERSION}.tar.gz"))
    with tarfile.open(tars[0]) as t:
        t.extractall(CACHE, filter="data")
    return src / "vendor/llama.cpp"


# cpuinfo flag -> ggml's cmake switch, for the build without AMX (GGML_NATIVE=OFF names each one)
ISA = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "bmi2": "BMI2", "avx_vnni": "AVX_VNNI",
       "avx512f": "AVX512", "avx512vbmi": "AVX512_VBMI", "avx512_vnni": "AVX512_VNNI",
       "avx512_bf16": "AVX512_BF16"}


def _flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    have = set(next((ln.split(":", 1)[1].split() for ln in open(cpuinfo) if ln.startswith("flags")), []))
    return ["-DGGML_NATIVE=OFF"] + [f"-DGGML_{v}={'ON' if k in have else 'OFF'}" for k, v in ISA.items()]


def ensure_built(log=print, variant: str = "native", targets: tuple = TARGETS) -> dict:
    """Build the targets once per variant (cached); return the paths of all TARGETS' binaries.
    variant: "native" (-DGGML_NATIVE=ON) or "no-amx" (this CPU's flags, AMX off)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:  # two benchmarks at once build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        root = _source(log)
        build = root / ("build" if variant == "native" else f"build-{variant}")
        bins = {t: build / "bin" / t for t in TARGETS}
        if not all(bins[t].is_file() for t in targets):
            log(f"building llama.cpp ({', '.join(targets)}, {variant}) in {build}: several minutes, once ...")
            isa = ["-DGGML_NATIVE=ON"] if variant == "native" else _flags()
            _run(["cmake", "-S", root, "-B", build, "-DCMAKE_BUILD_TYPE=Release", *isa, "-DLLAMA_CURL=OFF"],
                 log)
            _run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2), "--target", *targets], log)
    return {"root": root, "bench": bins["llama-bench"], "quantize": bins["llama-quantize"],
            "simple": bins["llama-simple"], "cli": bins["llama-cli"], "perplexity": bins["llama-perplexity"],
            "bin": build / "bin", "convert": root / "convert_hf_to_gguf.py", "version": VERSION,
            "variant": variant}


def _variant() -> str:
    """The build to use: "no-amx" once it exists (it is only built where the native one dies with
    SIGILL, see bench), else "native"; so converting and quantizing never build a second variant."""
    no_amx = CACHE / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp" / "build-no-amx" / "bin"
    if "v" not in _VARIANT and all((no_amx / t).is_file() for t in ("llama-bench", "llama-quantize")):
        _VARIANT["v"] = "no-amx"
    return _VARIANT.get("v", "native")


def convert(ckpt, outtype: str, out_dir, log=print) -> Path:
    """Our HF-layout checkpoint folder -> OUT_DIR/model-OUTTYPE.gguf with llama.cpp's own converter
    (kept when already there; never written into the checkpoint folder)."""
    paths = ensure_built(log, _variant())
    ckpt = Path(ckpt)
    out = Path(out_dir) / f"model-{outtype}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.is_file():
        env = dict(os.environ,
                   PYTHONPATH=os.pathsep.join([str(paths["root"] / "gguf-py"),
                                               os.environ.get("PYTHONPATH", "")]))
        _run([sys.executable, "-c", _CONVERT, paths["root"], ckpt, "--outtype", outtype, "--outfile", out],
             log, env=env)
    return out


def quantize(gguf, qtype: str, log=print) -> Path:
    """llama-quantize: f32 GGUF -> QTYPE (q8_0, q4_0, ...) beside it."""
    gguf = Path(gguf)
    out = gguf.with_name(gguf.stem.rsplit("-", 1)[0] + f"-{qtype}.gguf")
    if not out.is_file():
        _run([ensure_built(log, _variant())["quantize"], gguf, out, qtype.upper()], log)
    return out


def _samples(rec: dict, key: str) -> list[float]:
    return [float(x) for x in rec.get(key) or [rec[key.replace("samples", "avg")]]]


_VARIANT = {}  # the build that runs on this machine, found once per process


def bench(gguf, threads: int = 2, p: int = 64, n: int = 128, reps: int = 5, log=print) -> dict:
    """llama-bench: prefill of p tokens (ms per prompt) and decode of n tokens after a p-token
    context (tok/s), reps samples each; with the build and CPU facts llama-bench reports."""
    variant = _variant()
    exe = ensure_built(log, variant)["bench"]
    common = ["-m", gguf, "-t", threads, "-r", reps, "-o", "json"]
    try:
        pre = json.loads(_run([exe, *common, "-p", p, "-n", 0], log))[0]
    except RuntimeError as e:
        if variant != "native" or "exit -4" not in str(e):
            raise
        log("llama.cpp's native build dies with SIGILL (this VM reports AMX but does not allow it): "
            "using the build without AMX")
        _VARIANT["v"] = "no-amx"
        return bench(gguf, threads, p, n, reps, log)
    dec = json.loads(_run([exe, *common, "-p", 0, "-n", n, "-d", p], log))[0]
    return {"prefill_ms": [1e3 * p / t for t in _samples(pre, "samples_ts")],
            "decode_tok_s": _samples(dec, "samples_ts"), "threads": threads, "p": p, "n": n, "reps": reps,
            "build": dict({k: pre.get(k) for k in ("build_commit", "build_number", "cpu_info", "backends",
                                                   "type_k")},
                          variant=variant),
            "model": {k: pre.get(k) for k in ("model_type", "model_size", "model_n_params")}}


# tools/setup-llamacpp.sh: VARIANT [TARGET ...] built once (cached); prints the sdist, the bin folder
if __name__ == "__main__":
    built = ensure_built(lambda m: print(m, file=sys.stderr), sys.argv[1], tuple(sys.argv[2:]) or TARGETS)
    print(next((CACHE / "sdist").glob(f"llama_cpp_python-{VERSION}.tar.gz")), built["bin"])
