"""build: checkpoint -> artifact folder for a target, checked against torch before it is kept.

The target TOML names a backend (a `backends.Backend` record); its settings are resolved once
(backends.resolve: defaults <- the target's [section] <- --set), its `build.py` gets them typed in a
BuildContext, writes the files and hands back a BackendBuild. This module does what every backend
shares: held-out windows, the parity check (the rule comes from the backend's precision table), the
fixed-prompt reference a device checks itself against, the manifest (manifest.py, the settings under
manifest[section]), and the atomic rename into place. A failed check leaves no artifact behind.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import backends, manifest as mf
from ..backends import FP32_MAX_ABS, Backend, BackendBuild, BuildContext, Precision
from ..config import UserError
from ..files import atomic_dir
from ..pipeline.eval import EvalConfig, torch_logits, val_windows

PARITY_WINDOWS, WINDOW_LEN, REF_STEPS = 8, 64, 32
REF_PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."


class ParityError(UserError):
    """The artifact does not compute what the checkpoint does, by the build's rule: not written."""

    def __init__(self, msg: str, parity: dict):
        super().__init__(msg)
        self.parity = parity


def heldout_windows(data_dir: Path | None, n: int = PARITY_WINDOWS, T: int = WINDOW_LEN) -> list:
    """n evenly spaced windows of T tokens from val.bin: eval's windows, as model inputs only."""
    return val_windows(data_dir, EvalConfig(windows=n, window_len=T - 1), max_seq_len=T - 1)


def parity(model, rt, heldout: list, precision: Precision) -> dict:
    """Prefill every window through the artifact and torch: max abs error, top-1 agreement."""
    errs, agree = [], []
    for ids in heldout:
        ref, got = torch_logits(model, ids), rt.prefill(ids)
        errs.append(float(np.abs(ref - got).max()))
        agree.append(ref.argmax(-1) == got.argmax(-1))
    p = {"windows": len(heldout), "window_len": len(heldout[0]), "max_abs_err": max(errs),
         "top1_agreement": float(np.concatenate(agree).mean())}
    p["ok"], p["rule"] = precision.passes(p["max_abs_err"], p["top1_agreement"]), precision.rule
    return p


def reference(model, rt, prompt_ids: list[int], max_abs_err: float) -> dict:
    """The fixed prompt a device replays: torch's greedy continuation and this host's logits."""
    import torch
    ids = torch.tensor([prompt_ids])
    greedy = model.generate(ids, REF_STEPS)[0, len(prompt_ids):].tolist()
    from ..devices.runner import prefill_last
    art_last = prefill_last(rt, np.array(prompt_ids, np.int64))  # the path check_parity replays
    return {"prompt": REF_PROMPT, "prompt_ids": prompt_ids, "torch_greedy": greedy,
            "artifact_last_logits": [round(float(x), 5) for x in art_last],
            # a device may differ from this host by at most twice what this host differs from torch
            "tolerance_basis": max_abs_err}


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


def base_manifest(name: str, b: Backend, ctx: BuildContext, res: BackendBuild, training: dict) -> dict:
    """What the artifact is and how it was built; parity, reference and files are added after.
    The backend's settings, as resolved and then as the build made them, go under its section."""
    cfg, model, tgt = ctx.model.cfg, ctx.model, ctx.target
    return {"format": mf.FORMAT, "version": mf.VERSION, "target": name, "backend": b.name,
            "runtime": b.runtime, "precision": ctx.precision, "checkpoint": str(ctx.checkpoint),
            "arch": tgt["target"].get("arch"),  # the device's platform.machine(); None: any (this host)
            "model": {k: getattr(cfg, k) for k in ("vocab_size", "n_layer", "n_embd", "n_head",
                                                    "n_kv_head", "intermediate_size", "max_seq_len")}
            | {"head_dim": cfg.head_dim},
            "n_params": model.num_params(),
            "training": {k: training.get(k) for k in ("step", "val_loss", "corpus_sha256", "model_sha256")},
            "thresholds": tgt.get("thresholds", {}), "power": tgt.get("power", {}),
            "tools": mf.tool_versions(*res.tools), "weight_bytes": res.weight_bytes, **res.extra,
            b.section: backends.settings_table(ctx.settings) | res.section}


def host_runtime(art_dir: Path, manifest: dict):
    """The artifact's runtime on this machine, for the parity check; missing, it is one line."""
    from ..devices.runner import RuntimeMissing, open_runtime
    try:
        return open_runtime(art_dir, manifest)
    except RuntimeMissing as e:
        raise UserError(f"the build checks parity by running the artifact on this machine, and {e}") from None


def build(checkpoint, target: str, out, precision: str | None = None, data=None, sets: dict | None = None,
          log=print, gate: bool = True, tokenizer=None) -> dict:
    """checkpoint -> artifact folder for `target`; sets: --set KEY=VALUE of the backend's settings.
    gate=False records a failed parity check in the manifest (parity.ok false) instead of refusing
    the artifact: for measuring, never for shipping."""
    from ..pipeline import checkpoint as ckpt
    from ..pipeline.tokenizer import Tokenizer
    name, tgt = backends.load_target(target)
    b = backends.load(tgt["target"]["backend"])
    settings = backends.resolve(b, tgt.get(b.section), sets)
    precision = precision or tgt["target"]["precision"]
    spec = b.precision(precision)
    builder = b.module("build")
    model, tok_json, training = ckpt.load(checkpoint, tokenizer=tokenizer)
    heldout = heldout_windows(data or training.get("data_dir"))
    with atomic_dir(out) as tmp:
        ctx = BuildContext(model, ckpt.resolve(checkpoint, need_tokenizer=False), tgt, tmp, precision, heldout,
                           settings, log, tok_json)
        res = builder.build(ctx)
        (tmp / "tokenizer.json").write_text(tok_json)
        files = mf.files_table(tmp)
        check_really_quantised(files, model.num_params(), precision, res.weight_bytes)
        manifest = dict(base_manifest(name, b, ctx, res, training), files=files)  # the runtime opens listed files only
        rt = res.parity_runtime or host_runtime(tmp, manifest)
        log(f"parity check on {len(heldout)} held-out windows ...")
        p = parity(model, rt, heldout, spec)
        if not p["ok"] and gate:
            raise ParityError(f"parity failed for {name}/{precision}: max abs err {p['max_abs_err']:.3g}, "
                              f"top-1 agreement {p['top1_agreement']:.3f} (rule {p['rule']}); artifact not written"
                              + (f": {spec.advice}" if spec.advice else ""), p)
        prompt_ids = Tokenizer(tok_json).encode(REF_PROMPT)[: model.cfg.max_seq_len // 2]
        manifest["reference"] = reference(model, rt, prompt_ids, p["max_abs_err"])
        min_top1 = backends.INT8_MIN_TOP1 if spec.min_top1 is None else spec.min_top1  # fp32: int8's on the device
        tol = {"min_top1": min_top1, "max_abs_vs_host": max(2 * p["max_abs_err"], FP32_MAX_ABS)}
        manifest["parity"] = dict(p, on_device_tolerance=tol)
        manifest["size_bytes"] = sum(f["size"] for f in files.values())
        manifest = mf.write(tmp, manifest)
    return manifest
