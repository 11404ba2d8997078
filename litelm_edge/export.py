"""build: checkpoint -> artifact folder for a target, checked against torch before it is kept.

The target TOML names a backend; `litelm_edge/backend_<name>.py` writes the files. This module does
what every backend shares: held-out windows, the parity check, the fixed-prompt reference a device
checks itself against, the manifest (sha256 and size of each file, tool versions), and the atomic
rename into place. A failed check leaves no artifact behind.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .checkpoint import atomic_dir, sha256_file
from .config import UserError, named_toml
from .eval import EvalConfig, torch_logits, val_windows

FORMAT, VERSION = "litelm-edge-artifact", 1
PARITY_WINDOWS, WINDOW_LEN, REF_STEPS = 8, 64, 32
FP32_MAX_ABS = 1e-3  # logits, fp32 artifact vs torch
INT8_MIN_TOP1 = 0.95  # next-token agreement with torch on held-out windows
INT4_MIN_TOP1 = 0.90  # INT4 blocks: flips more near-ties; judged by perplexity too
REF_PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."


class ParityError(UserError):
    """The artifact does not compute what the checkpoint does, by the build's rule: not written."""

    def __init__(self, msg: str, parity: dict):
        super().__init__(msg)
        self.parity = parity


@dataclass
class BuildContext:
    model: object  # litelm_edge.model.Transformer, eval, fp32
    checkpoint: Path
    target: dict  # the whole target TOML
    out_dir: Path  # temporary folder, renamed into place after the checks
    precision: str
    heldout: list  # np.int64 arrays of held-out token ids (parity, calibration)
    recipe: dict = field(default_factory=dict)  # backend options from --set build.*
    log: Callable[[str], None] = print


def load_target(name: str) -> tuple[str, dict]:
    from .target import load_target as load
    return load(name)


def backend_module(name: str):
    try:
        return importlib.import_module(f"litelm_edge.backend_{name}")
    except ModuleNotFoundError as e:
        if e.name == f"litelm_edge.backend_{name}":
            have = sorted(p.stem[8:] for p in Path(__file__).parent.glob("backend_*.py"))
            raise UserError(f"unknown backend '{name}', have: {', '.join(have)}") from e
        raise UserError(f"backend '{name}' needs {e.name}: pip install 'litelm-edge[<target>]'") from e


def heldout_windows(data_dir: Path | None, n: int = PARITY_WINDOWS, T: int = WINDOW_LEN) -> list:
    """n evenly spaced windows of T tokens from val.bin: eval's windows, as model inputs only."""
    return val_windows(data_dir, EvalConfig(windows=n, window_len=T - 1), max_seq_len=T - 1)


def parity(model, rt, heldout: list, precision: str, min_top1: float = INT8_MIN_TOP1) -> dict:
    """Prefill every window through the artifact and torch: max abs error, top-1 agreement."""
    errs, agree = [], []
    for ids in heldout:
        ref, got = torch_logits(model, ids), rt.prefill(ids)
        errs.append(float(np.abs(ref - got).max()))
        agree.append(ref.argmax(-1) == got.argmax(-1))
    p = {"windows": len(heldout), "window_len": int(len(heldout[0])), "max_abs_err": max(errs),
         "top1_agreement": float(np.concatenate(agree).mean())}
    if precision == "fp32":
        p["ok"], p["rule"] = p["max_abs_err"] <= FP32_MAX_ABS, f"max_abs_err <= {FP32_MAX_ABS}"
    else:
        p["ok"], p["rule"] = p["top1_agreement"] >= min_top1, f"top1_agreement >= {min_top1}"
    return p


def reference(model, rt, prompt_ids: list[int], max_abs_err: float) -> dict:
    """The fixed prompt a device replays: torch's greedy continuation and this host's logits."""
    import torch
    ids = torch.tensor([prompt_ids])
    greedy = model.generate(ids, REF_STEPS)[0, len(prompt_ids):].tolist()
    art_last = rt.prefill(np.array(prompt_ids, np.int64))[-1]
    return {"prompt": REF_PROMPT, "prompt_ids": prompt_ids, "torch_greedy": greedy,
            "artifact_last_logits": [round(float(x), 5) for x in art_last],
            # a device may differ from this host by at most twice what this host differs from torch
            "tolerance_basis": max_abs_err}


def tool_versions(*mods: str) -> dict:
    out = {"python": platform.python_version()}
    for m in ("litelm_edge", "torch", "numpy") + mods:
        try:
            out[m] = getattr(importlib.import_module(m), "__version__", "unknown")
        except ImportError:
            out[m] = "not installed"
    return out


def files_table(d: Path) -> dict:
    return {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
            for p in sorted(d.iterdir()) if p.is_file() and p.name != "manifest.json"}


def check_really_quantised(files: dict, n_params: int, precision: str, weight_bytes: dict | None):
    """An "int8" artifact must hold int8 weights, not float ones.

    weight_bytes: {dtype: bytes} of the stored weights, as the backend read them back from its
    own files; without it, the files' total size (less the tokenizer) against fp32 size decides.
    """
    if precision == "fp32":
        return
    if weight_bytes:
        low = sum(v for k, v in weight_bytes.items() if k in ("int8", "uint8", "int4", "uint4"))
        high = sum(v for k, v in weight_bytes.items() if k not in ("int8", "uint8", "int4", "uint4"))
        if low >= 2 * high:
            return
        detail = f"{low / 1e6:.2f} MB of int8 weights beside {high / 1e6:.2f} MB of float ones"
    else:
        size = sum(f["size"] for n, f in files.items() if n != "tokenizer.json")
        if size <= 0.5 * 4 * n_params:
            return
        detail = f"{size / 1e6:.1f} MB for {n_params / 1e6:.1f}M parameters (float-sized)"
    raise UserError(f"build claims {precision} but the artifact holds {detail}: the quantiser did not apply")


def base_manifest(name: str, tgt: dict, precision: str, ctx: BuildContext, res: dict, training: dict) -> dict:
    """What the artifact is and how it was built; parity, reference and files are added after."""
    cfg, model = ctx.model.cfg, ctx.model
    return {"format": FORMAT, "version": VERSION, "target": name, "backend": tgt["target"]["backend"],
            "runtime": res["runtime"], "precision": precision, "checkpoint": str(ctx.checkpoint),
            "model": {k: getattr(cfg, k) for k in ("vocab_size", "n_layer", "n_embd", "n_head",
                                                    "n_kv_head", "intermediate_size", "max_seq_len")}
            | {"head_dim": cfg.head_dim},
            "n_params": model.num_params(), "training": {k: training.get(k) for k in ("step", "val_loss", "corpus_sha256")},
            "thresholds": tgt.get("thresholds", {}), "power": tgt.get("power", {}),
            "device": tgt.get("device", {}), "tools": tool_versions(*res.get("tools", ())),
            "weight_bytes": res.get("weight_bytes"), **res.get("extra", {})}


def host_runtime(art_dir: Path, manifest: dict):
    """The artifact's runtime on this machine, for the parity check; missing, it is one line."""
    from .device_runner import RuntimeMissing, open_runtime
    try:
        return open_runtime(art_dir, manifest)
    except RuntimeMissing as e:
        raise UserError(f"the build checks parity by running the artifact on this machine, and {e}") from None


def build(checkpoint, target: str, out, precision: str | None = None, data=None, recipe: dict | None = None,
          log=print, gate: bool = True, tokenizer=None) -> dict:
    """checkpoint -> artifact folder for `target`. gate=False records a failed parity check in the
    manifest (parity.ok false) instead of refusing the artifact: for measuring, never for shipping."""
    from . import checkpoint as ckpt
    from .device_runner import open_runtime
    from .tokenizer import Tokenizer
    from .target import backend_sets
    name, tgt = load_target(target)
    backend = backend_module(tgt["target"]["backend"])
    recipe = backend_sets(tgt["target"]["backend"], recipe or {})
    model, tok_json, training = ckpt.load(checkpoint, tokenizer=tokenizer)
    precision = precision or tgt["target"].get("precision", "int8")
    heldout = heldout_windows(data or training.get("data_dir"))
    with atomic_dir(out) as tmp:
        ctx = BuildContext(model, ckpt.resolve(checkpoint, need_tokenizer=False), tgt, tmp, precision, heldout,
                           recipe, log)
        res = backend.build(ctx)
        (tmp / "tokenizer.json").write_text(tok_json)
        files = files_table(tmp)
        check_really_quantised(files, model.num_params(), precision, res.get("weight_bytes"))
        manifest = base_manifest(name, tgt, precision, ctx, res, training)
        rt = res.get("parity_runtime") or host_runtime(tmp, manifest)
        log(f"parity check on {len(heldout)} held-out windows ...")
        min_top1 = res.get("min_top1", INT8_MIN_TOP1)  # a backend may set it per precision (INT4)
        p = parity(model, rt, heldout, precision, min_top1)
        if not p["ok"] and gate:
            raise ParityError(f"parity failed for {name}/{precision}: max abs err {p['max_abs_err']:.3g}, "
                            f"top-1 agreement {p['top1_agreement']:.3f} (rule {p['rule']}); artifact not written"
                            + {"fp32": "", "int8": ": fine-tune for int8 with `litelm-edge compress qat`, or build "
                               "--precision fp32"}.get(precision, ": build a wider --precision (int8 or fp32)"), p)
        prompt_ids = Tokenizer(tok_json).encode(REF_PROMPT)[: model.cfg.max_seq_len // 2]
        manifest["reference"] = reference(model, rt, prompt_ids, p["max_abs_err"])
        tol = {"min_top1": min_top1, "max_abs_vs_host": max(2 * p["max_abs_err"], FP32_MAX_ABS)}
        manifest["parity"] = dict(p, on_device_tolerance=tol)
        manifest["files"] = files
        manifest["artifact_id"] = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        manifest["size_bytes"] = sum(f["size"] for f in files.values())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
