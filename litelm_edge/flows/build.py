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
from ..pipeline.eval import EvalConfig, divergence_summary, token_divergence, torch_logits, val_windows

# 16 windows x 128 predicted tokens (2,048): the ppl ratio to +-0.25 % at 8 bits and +-3 % at 4 bits
# on SmolLM2-135M (one standard error, docs/quality.md); a 135M build spends ~1 min of CPU on it
PARITY_WINDOWS, WINDOW_LEN, REF_STEPS = 16, 128, 32
# on-device top-1 may lose this many of the reference's steps to other kernels' near-ties
DEVICE_SLACK_STEPS = 2
REF_PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."


class ParityError(UserError):
    """The artifact does not compute what the checkpoint does, by the build's rule: not written."""

    def __init__(self, msg: str, parity: dict):
        super().__init__(msg)
        self.parity = parity


def heldout_windows(data_dir: Path | None, n: int = PARITY_WINDOWS, T: int = WINDOW_LEN) -> list:
    """n evenly spaced windows of T + 1 tokens from val.bin (T inputs, T targets): eval's windows."""
    return val_windows(data_dir, EvalConfig(windows=n, window_len=T), max_seq_len=T)


def _decoded(rt, ids, h: int) -> np.ndarray:
    """The logits of ids[h:] as generation computes them: ids[:h] prefilled, then one decode step
    a token (a runtime may take another path for one token, e.g. int8 activations)."""
    rt.prefill(ids[:h])
    return np.stack([rt.decode(int(t)) for t in ids[h:]])


def _summary(per_token: list, errs: list) -> dict:
    """The gate's figures of one pass (prefill or decode) over every window."""
    s = divergence_summary(per_token)
    return {"max_abs_err": max(errs), "top1_agreement": s["top1_agreement"], "ppl_ratio": s["ppl_ratio"],
            "ppl_ratio_se": s["ppl_ratio_se"], "mean_kl": s["mean_kl"], "ppl_torch": s["ppl_ref"],
            "ppl_artifact": s["ppl"]}


def parity(model, rt, heldout: list, precision: Precision) -> dict:
    """Prefill every window through the artifact and torch, and score both on the next tokens as
    `llama-perplexity --kl-divergence` does: the perplexity ratio (artifact / torch) with its
    standard error, the mean KL(torch || artifact), top-1 agreement; and the max abs logit error.
    Then the same under "decode": each window's second half decoded a token a step (_decoded).
    The precision's rule judges both (fp32: max abs; quantised: ppl ratio and mean KL)."""
    errs, per_token, dec_errs, dec_token = [], [], [], []
    for w in heldout:
        ids, targets = w[:-1], w[1:]
        ref, got = torch_logits(model, ids), rt.prefill(ids)
        errs.append(float(np.abs(ref - got).max()))
        per_token.append(token_divergence(ref, got, targets))
        h = len(ids) // 2
        dec = _decoded(rt, ids, h)
        dec_errs.append(float(np.abs(ref[h:] - dec).max()))
        dec_token.append(token_divergence(ref[h:], dec, targets[h:]))
    p = ({"windows": len(heldout), "window_len": int(len(heldout[0]) - 1)} | _summary(per_token, errs)
         | {"decode": _summary(dec_token, dec_errs),
            "how": "measured on this build host: the artifact's runtime vs torch fp32 on held-out windows "
                   "(llama-perplexity --kl-divergence definitions, every token scored); decode: each "
                   "window's second half decoded a token a step after its first half prefilled"})
    p["ok"], p["rule"] = precision.passes(p) and precision.passes(p["decode"]), precision.rule
    return p


def describe(p: dict) -> str:
    """One line of the gate's figures (build output, refusals, reports)."""
    d = p.get("decode")  # manifests before 2026-12-07 have none
    return (f"ppl ratio {p['ppl_ratio']:.4f} +- {p['ppl_ratio_se']:.4f}, mean KL {p['mean_kl']:.4f}, "
            f"top-1 {p['top1_agreement']:.3f}, max abs {p['max_abs_err']:.3g}"
            + (f"; decoded: ppl ratio {d['ppl_ratio']:.4f}, mean KL {d['mean_kl']:.4f}" if d else ""))


def reference(model, rt, prompt_ids: list[int], max_abs_err: float) -> tuple[dict, dict]:
    """The fixed prompt a device replays (torch's greedy continuation and this host's logits), and
    the tolerance it is held to: the top-1 this host's artifact reaches on that same replay, less
    DEVICE_SLACK_STEPS, so a quantised build is held to what it does, not to a fixed guess."""
    import torch
    ids = torch.tensor([prompt_ids])
    greedy = model.generate(ids, REF_STEPS)[0, len(prompt_ids):].tolist()
    from ..devices.runner import check_parity, prefill_last
    art_last = prefill_last(rt, np.array(prompt_ids, np.int64))  # the path check_parity replays
    ref = {"prompt": REF_PROMPT, "prompt_ids": prompt_ids, "torch_greedy": greedy,
           "artifact_last_logits": [round(float(x), 5) for x in art_last],
           # a device may differ from this host by at most twice what this host differs from torch
           "tolerance_basis": max_abs_err}
    tol = {"min_top1": 1.0, "max_abs_vs_host": max(2 * max_abs_err, FP32_MAX_ABS)}
    host = check_parity(rt, ref, tol)["top1_agreement_vs_torch"]
    tol["min_top1"] = round(max(0.0, host - DEVICE_SLACK_STEPS / max(1, len(greedy))), 4)
    return ref, tol


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
    data_dir = data or training.get("data_dir")
    heldout = heldout_windows(data_dir, T=min(WINDOW_LEN, model.cfg.max_seq_len))
    with atomic_dir(out) as tmp:
        ctx = BuildContext(model, ckpt.resolve(checkpoint, need_tokenizer=False), tgt, tmp, precision,
                           [w[:-1] for w in heldout],
                           settings, log, tok_json, Path(data_dir))
        res = builder.build(ctx)
        (tmp / "tokenizer.json").write_text(tok_json)
        files = mf.files_table(tmp)
        check_really_quantised(files, model.num_params(), precision, res.weight_bytes)
        # the runtime opens listed files only
        manifest = dict(base_manifest(name, b, ctx, res, training), files=files)
        rt = res.parity_runtime or host_runtime(tmp, manifest)
        log(f"parity check on {len(heldout)} held-out windows ...")
        p = parity(model, rt, heldout, spec)
        log(f"parity: {describe(p)} (rule {p['rule']}: {'pass' if p['ok'] else 'FAIL'})")
        if not p["ok"] and gate:
            raise ParityError(f"parity failed for {name}/{precision}: {describe(p)} (rule {p['rule']}); "
                              "artifact not written" + (f": {spec.advice}" if spec.advice else ""), p)
        prompt_ids = Tokenizer(tok_json).encode(REF_PROMPT)[: model.cfg.max_seq_len // 2]
        manifest["reference"], tol = reference(model, rt, prompt_ids, p["max_abs_err"])
        manifest["parity"] = dict(p, on_device_tolerance=tol)
        manifest["size_bytes"] = sum(f["size"] for f in files.values())
        manifest = mf.write(tmp, manifest)
    return manifest
