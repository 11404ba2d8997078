"""LiteRT backend, build side: a checkpoint -> model.tflite with prefill and decode signatures.

The conversion runs in the toolchain venv (`python()`, below) as `python -m litelm_edge.backends.litert.convert`;
this module only writes its inputs, checks what comes back, and says whether the size meets the
target. Keys (Settings: the target TOML's [litert] table, targets/android.toml, then --set):
  threads      XNNPACK threads on the device
  prefill_len  tokens per prefill call (longer prompts run in chunks)
  capacity     KV-cache length; a multiple of prefill_len
  mask_value   additive attention mask (-1e4); int8-full clamps it to -30 (FULL_INT_MASK)
  windows      attention windows below capacity ("128"): one decode signature each, so a
               call attends over the filled part of the cache only
  prefill_windows  the same for prefill signatures (unset: as windows; "": the capacity only).
               Each signature holds its own per-channel quantization parameters: +0.4 MB for int4-ch
  gptq_windows, gptq_len  every INT4 precision's GPTQ calibration: evenly spaced windows of the
               data folder's train.bin (never val.bin: the gate's held-out windows come from there)
  gptq_act_order  GPTQ's column order: by decreasing input energy (static group scales)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ... import toolchain
from ...config import UserError
from .. import BackendBuild, BuildContext
from . import BACKEND, FULL_INT_MASK, SNAPPED, Settings

# litert-converter pins xdsl 0.28 (typing-extensions<4.13) and TVM needs a newer one: pip fails or
# backtracks to litert-torch 0.8 with another torch. So the converter gets its own venv.
VENV = "litert-0.10"
PACKAGES = ["litert-torch==0.10.0", "ai-edge-quantizer==0.10.0", "ai-edge-litert==2.3.0", "safetensors>=0.4"]


def python(log=lambda msg: None) -> Path:
    """The converter venv's python (made on first use; tools/setup-litert.sh makes it ahead)."""
    return toolchain.ensure(VENV, PACKAGES, log, imports=("litert_torch", "ai_edge_quantizer"))


def _snap(ctx: BuildContext, path: Path) -> dict:
    from .. import snap  # torch: imported by the precisions that run GPTQ only
    layers, head = SNAPPED[ctx.precision]
    return snap.snap_weights(ctx, path, block=layers, head=head)


MB = 1e6  # thresholds are decimal megabytes, as a phone's storage reports them


def effective(s: Settings, precision: str) -> dict:
    """What the settings mean for this build: the windows as lists of ints (prefill_windows unset:
    as windows), the mask clamped for int8-full. Written over them under manifest["litert"]."""
    prefill = s.windows if s.prefill_windows is None else s.prefill_windows
    mask = max(s.mask_value, FULL_INT_MASK) if precision == "int8-full" else s.mask_value
    return {"windows": _windows(s.windows, s.prefill_len, s.capacity, "windows"),
            "prefill_windows": _windows(prefill, s.prefill_len, s.capacity, "prefill_windows"),
            "mask_value": mask}


def host_runtime_or_fail():
    """The host-side LiteRT interpreter that the build's parity check needs, or one line saying
    what to install (the converter's own venv cannot serve it to this process)."""
    from .runtime import PACKAGES, _interpreter_class
    try:
        _interpreter_class()
    except ImportError:
        raise UserError("the android build checks parity by running the .tflite on this machine, and "
                        f"ai_edge_litert is not installed: python3 -m pip install {' '.join(PACKAGES)} "
                        "(or pip install 'litelm-edge[android]')") from None


def _windows(text: str, prefill_len: int, capacity: int, key: str = "windows") -> list[int]:
    """"128,256" -> [128, 256]: each a multiple of prefill_len below capacity ("" for none)."""
    try:
        ws = sorted({int(w) for w in str(text).replace(" ", "").split(",") if w})
    except ValueError:
        raise UserError(f"litert {key} '{text}' must be comma-separated integers, e.g. 128,256") from None
    bad = [w for w in ws if w <= 0 or w >= capacity or w % prefill_len]
    if bad:
        raise UserError(f"litert {key} {bad} must be multiples of prefill_len {prefill_len} below "
                        f"capacity {capacity}")
    return ws


def _calibration_file(heldout: list, path: Path, windows: int = 16) -> str | None:
    """Held-out windows (>= 8 tokens each) for full-integer calibration (npz), or None without text."""
    ws = [np.asarray(h) for h in heldout if len(h) >= 8][:windows]
    if not ws:
        return None
    np.savez(path, *ws)
    return str(path)


def _convert(py: Path, spec: dict, log) -> dict:
    spec_path = Path(spec["out_dir"]) / "spec.json"
    spec_path.write_text(json.dumps(spec))
    log(f"litert: converting ({spec['precision']}) with {py}")
    toolchain.run(py, "litelm_edge.backends.litert.convert", [str(spec_path)], log)
    return json.loads((Path(spec["out_dir"]) / "convert.json").read_text())


def check_precision(precision: str, report: dict):
    """An integer artifact whose weights are mostly float fails the build (no silent fallback)."""
    if precision == "fp32":
        return
    by = report["breakdown"]["weights_by_dtype"]
    floats = by.get("float32", 0)
    if floats > 0.05 * sum(by.values()):
        raise UserError(f"{precision} artifact holds {floats / MB:.1f} MB of float32 weights: the quantizer "
                        "skipped them; check the ai-edge-quantizer version (want 0.10.0)")


def size_verdict(size: int, target: dict) -> dict:
    limit = target.get("thresholds", {}).get("max_size_mb")
    if limit is None:
        return {}
    ok = size <= limit * MB
    note = (f"{size / MB:.2f} MB (model + tokenizer) {'meets' if ok else 'misses'} the {limit} MB threshold"
            + ("" if ok else ": use recipes/android-15mb.toml (INT4 weights, --precision int4-ch or int4-b32)"))
    return dict(meets_size=ok, size_note=note)


def build(ctx: BuildContext) -> BackendBuild:
    """model.tflite at ctx.precision; the settings as built go under manifest["litert"]."""
    BACKEND.precision(ctx.precision)
    s: Settings = ctx.settings
    eff = effective(s, ctx.precision)
    host_runtime_or_fail()  # before the conversion: the parity check runs the .tflite here
    py = python(ctx.log)
    with tempfile.TemporaryDirectory(prefix="litert-") as tmp:
        gptq = _snap(ctx, Path(tmp) / "snapped.npz") if ctx.precision in SNAPPED else None
        spec = dict(checkpoint=str(ctx.checkpoint), out_dir=tmp, precision=ctx.precision,
                    prefill_len=s.prefill_len, capacity=s.capacity, **eff,
                    calib=_calibration_file(ctx.heldout, Path(tmp) / "calib.npz"),
                    weights=str(Path(tmp) / "snapped.npz") if gptq else None)
        report = _convert(py, spec, ctx.log)
        check_precision(ctx.precision, report)
        os.replace(Path(tmp) / "model.tflite", Path(ctx.out_dir) / "model.tflite")
    tok = Path(ctx.checkpoint) / "tokenizer.json"  # the build flow ships it beside the model: it counts
    size = report["breakdown"]["total"] + (tok.stat().st_size if tok.is_file() else 0)
    verdict = size_verdict(size, ctx.target)
    ctx.log("litert: " + ", ".join(f"{k} {v / MB:.2f} MB" for k, v in report["breakdown"].items()
                                   if isinstance(v, int)) + (f"; {verdict['size_note']}" if verdict else ""))
    extra = dict(graphs={"model": "model.tflite"}, converter=report["versions"],
                 size_breakdown=report["breakdown"], weight_dtypes=report["weight_dtypes"],
                 recipe=report["recipe"], **({"gptq": dict(gptq, snapped=report["snapped"])} if gptq else {}),
                 convert_s=report["convert_s"],
                 quantize_s=report["quantize_s"], **verdict)
    return BackendBuild(report["breakdown"]["weights_by_dtype"], ("ai_edge_litert",), extra, section=eff)
