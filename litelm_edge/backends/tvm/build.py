"""TVM backend, build side: checkpoint -> a Relax VM library for any LLVM CPU target, cross-compiled.

The target TOML's [tvm] table (Settings, resolved with --set by the build flow) is all a board needs:
    target = "raspberry-pi/4b-aarch64"   # a TVM tag, or a table {kind, mtriple, mcpu, mattr, num-cores}
    cc = "aarch64-linux-gnu-g++"         # links the library; omit for this machine
    cc_package = "g++-aarch64-linux-gnu" # named in the error when cc is missing
    tile = [4, 16]                       # optional register tile (rows x columns) of the matmuls
    gemv = 64                            # optional decode GEMV width (columns a task)
The compiler runs in its own venv (toolchain.py) as `python -m litelm_edge.backends.tvm.convert SPEC`.
A cross-compiled library cannot run here, so the same module is also compiled for this machine
and the build flow checks parity on that one (HostParity), and on the device with `bench --remote`.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ... import toolchain
from ...config import UserError
from .. import BackendBuild, BuildContext
from . import BACKEND, Settings
from .serve import recv, send

VENV = "tvm-0.27"
PACKAGES = ["apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post0", "safetensors>=0.4", "numpy"]


def python() -> Path:
    return toolchain.ensure(VENV, PACKAGES)


def check_cc(s: Settings) -> str | None:
    cc = s.cc
    if cc and not shutil.which(cc):
        raise UserError(f"{cc} not found: apt-get install {s.cc_package}  (or run tools/setup-tvm.sh)")
    if not shutil.which("g++"):  # the host parity library is linked with g++
        raise UserError("g++ not found: apt-get install g++")
    return cc


class HostParity:
    """The runtime API (prefill/decode) over a TvmRuntime served from the TVM venv."""

    def __init__(self, py: Path, lib_dir: Path, manifest: dict):
        self.dir = lib_dir
        (lib_dir / "manifest.json").write_text(json.dumps(manifest))
        self.proc = subprocess.Popen([str(py), "-m", "litelm_edge.backends.tvm.serve", str(lib_dir),
                                      str(lib_dir / "manifest.json")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=toolchain.src_env())

    def _ask(self, req: np.ndarray) -> np.ndarray:
        send(self.proc.stdin, req.astype(np.int64))
        out = recv(self.proc.stdout)
        if out is None:
            raise UserError("the TVM parity process died: run the build again with the log shown")
        return out

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        return self._ask(np.concatenate([[0], np.asarray(ids, np.int64)]))

    def prefill_last(self, ids: np.ndarray) -> np.ndarray:
        return self._ask(np.concatenate([[2], np.asarray(ids, np.int64)]))

    def decode(self, token: int) -> np.ndarray:
        return self._ask(np.array([1, token]))

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)

    __del__ = close


TENSOR_MAGIC = 0xDD5E40F096B4A13F  # TVM's serialised-tensor header (kTVMNDArrayMagic)
DL_CODES = {0: "int", 1: "uint", 2: "float", 4: "bfloat"}  # DLPack dtype codes


def embedded_weight_bytes(lib: Path) -> dict[str, int]:
    """{dtype: bytes} of the tensors the compiled library embeds (the VM's constant pool), read
    from the file itself, so a cross-compiled aarch64 library is read here as it will ship.
    Each constant is stored as magic, reserved, device, ndim, dtype, shape, byte size, data."""
    import struct
    blob, out = Path(lib).read_bytes(), {}
    at = blob.find(struct.pack("<Q", TENSOR_MAGIC))
    while 0 <= at <= len(blob) - 32:
        reserved, device, _, ndim = struct.unpack_from("<QiiI", blob, at + 8)
        code, bits, lanes = struct.unpack_from("<BBH", blob, at + 28)
        if reserved == 0 and device == 1 and ndim <= 8 and code in DL_CODES and at + 40 + 8 * ndim <= len(blob):
            shape = struct.unpack_from(f"<{ndim}q", blob, at + 32)
            (size,) = struct.unpack_from("<q", blob, at + 32 + 8 * ndim)
            if size == int(np.prod(shape)) * bits * lanes // 8:
                name = f"{DL_CODES[code]}{bits}" + (f"x{lanes}" if lanes > 1 else "")
                out[name] = out.get(name, 0) + size
        at = blob.find(struct.pack("<Q", TENSOR_MAGIC), at + 8)
    return out


def _meta(ctx: BuildContext, convert: dict, weight_bytes: dict) -> dict:
    c = ctx.model.cfg
    # the tag, resolved
    return {"library": "model.so", "precision": ctx.precision, "llvm_target": convert["target"],
            "cache_shape": [c.n_layer, 1, c.n_kv_head, 0, c.head_dim], "entry": "forward",
            "tile": convert["tile"], "gemv": convert["gemv"], "weight_bytes": weight_bytes,
            "compile_s": convert["compile_s"], "tvm": "0.27.0.post1", "cache": convert["cache"]} | {
                k: convert[k] for k in ("int4_as_int8", "int4_kernel", "int8_kernel", "entry_last")
                if k in convert}


def _lossless(weights: dict) -> dict:
    """int4-gptq: each of GPTQ's weights (backends/snap.py) must come back unchanged through the
    int4-b32 layout's own quantizer (graph.quantize_int4), or the build stops. A matrix narrower
    than the layout's 64-column groups (a small model's k or v, fused into qkv in the graph) is
    checked padded with zero columns: the quantizer is per column."""
    import torch
    import torch.nn.functional as F
    from .graph import INT4_GROUP, dequantize_int4, quantize_int4
    lossless = 0
    for w in weights.values():
        kn = torch.from_numpy(w).t().contiguous()
        padded = F.pad(kn, (0, -kn.shape[1] % INT4_GROUP))
        lossless += torch.equal(dequantize_int4(*quantize_int4(padded))[:, :kn.shape[1]], kn)
    if lossless != len(weights):
        raise RuntimeError(f"int4-gptq: {len(weights) - lossless} of {len(weights)} snapped weights "
                           "change in the int4 layout")
    return {"weights": len(weights), "lossless": lossless}


def build(ctx: BuildContext) -> BackendBuild:
    """The library for ctx.settings.target; meta (what the runtime reads) under manifest["tvm"]."""
    BACKEND.precision(ctx.precision)
    s: Settings = ctx.settings
    cc = check_cc(s)
    py = toolchain.ensure(VENV, PACKAGES, ctx.log)
    host_dir = Path(tempfile.mkdtemp(prefix="litelm-tvm-host-"))
    if ctx.precision == "int4-gptq":  # GPTQ in this process (torch), its weights to the converter
        from .. import snap
        gptq = snap.snap_weights(ctx, host_dir / "snapped.npz", check=_lossless)
    else:
        gptq = None
    spec = {"checkpoint": str(ctx.checkpoint), "out_dir": str(ctx.out_dir), "precision": ctx.precision,
            "target": s.target, "cc": cc, "host_dir": str(host_dir) if cc else None, "tile": s.tile,
            "gemv": s.gemv, "weights": str(host_dir / "snapped.npz") if gptq else None}
    (host_dir / "spec.json").write_text(json.dumps(spec))
    ctx.log(f"tvm: compiling for {s.target} ({ctx.precision})")
    toolchain.run(py, "litelm_edge.backends.tvm.convert", [str(host_dir / "spec.json")], ctx.log)
    convert = json.loads((Path(ctx.out_dir) / "convert.json").read_text())
    if not cc:  # a native build: the parity library is the shipped one
        shutil.copy(Path(ctx.out_dir) / "model.so", host_dir / "model.so")
    weights = embedded_weight_bytes(Path(ctx.out_dir) / "model.so")  # what ships, not the torch buffers
    meta = _meta(ctx, convert, weights) | ({"gptq": gptq} if gptq else {})
    return BackendBuild(weights, section=meta,  # weights: {dtype: bytes} embedded in model.so
                        parity_runtime=HostParity(py, host_dir, {"tvm": meta}))
