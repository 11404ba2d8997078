"""eval: validation perplexity of a checkpoint (torch) or of a built artifact (its own runtime).

Both read the same windows of val.bin (the held-out split of `litelm-edge data`), so the numbers
compare: a PTQ or QAT artifact is measured on what ships, through ORT, TVM or LiteRT, via the
device runner's generic `prefill(ids) -> logits (T, V)` API.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import UserError


@dataclass
class EvalConfig:
    windows: int = 32  # evenly spaced, non-overlapping windows of val.bin
    window_len: int = 128  # tokens predicted per window (capped at the model's max_seq_len)

    def validate(self):
        from ..config import at_least
        at_least(self, windows=1, window_len=1)


def val_windows(data_dir, c: EvalConfig, max_seq_len: int) -> list[np.ndarray]:
    """Up to c.windows arrays of T+1 tokens (T inputs, T targets), T = min(window_len, max_seq_len)."""
    val = Path(data_dir or "") / "val.bin"
    if not data_dir or not val.is_file():
        raise UserError(f"no held-out data at '{val}': pass --data DIR made by `litelm-edge data`")
    from .data import token_memmap
    ids = token_memmap(val)  # uint16 or uint32, as meta.json says
    T = min(c.window_len, max_seq_len)
    n = min(c.windows, (len(ids) - 1) // T)
    if n < 1:
        raise UserError(f"{val} holds {len(ids)} tokens, fewer than one {T + 1}-token window: "
                        "--set window_len=N with a smaller N")
    starts = np.linspace(0, len(ids) - T - 1, n).astype(int)
    return [np.array(ids[s:s + T + 1], dtype=np.int64) for s in starts]


def nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood (nats) of targets (T,) under logits (T, V), in float64."""
    return float(-log_softmax(logits)[np.arange(len(targets)), targets].sum())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(T, V) logits -> (T, V) log-probabilities, float64."""
    z = logits.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def token_divergence(ref: np.ndarray, got: np.ndarray, targets: np.ndarray) -> dict:
    """Per-token figures of `llama-perplexity --kl-divergence` (tools/perplexity/perplexity.cpp,
    log_softmax()): ref = the base's logits (torch), got = the quantised model's, both (T, V).
    Returns (T,) arrays: nll_ref, nll_got (nats), kl = KL(ref || got) (nats), same_top."""
    lr, lg = log_softmax(ref), log_softmax(got)
    rows = np.arange(len(targets))
    return {"nll_ref": -lr[rows, targets], "nll_got": -lg[rows, targets],
            "kl": (np.exp(lr) * (lr - lg)).sum(-1), "same_top": ref.argmax(-1) == got.argmax(-1)}


def divergence_summary(per_token: list[dict]) -> dict:
    """llama.cpp's summary over every scored token: PPL ratio with its standard error (from the
    paired log-likelihood differences, as llama.cpp's ln(PPL(Q)/PPL(base)) +- its uncertainty),
    mean KL, top-1 agreement ("same top p")."""
    cat = {k: np.concatenate([d[k] for d in per_token]) for k in per_token[0]}
    diff = cat["nll_got"] - cat["nll_ref"]  # ln(PPL ratio) = mean of this
    n = len(diff)
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {"tokens": n, "ppl_ref": math.exp(cat["nll_ref"].mean()), "ppl": math.exp(cat["nll_got"].mean()),
            "ppl_ratio": math.exp(diff.mean()), "ppl_ratio_se": math.exp(diff.mean()) * se,
            "mean_kl": float(cat["kl"].mean()), "top1_agreement": float(cat["same_top"].mean())}


def perplexity(logits_fn, windows: list[np.ndarray]) -> dict:
    """logits_fn(ids (T,)) -> (T, V); exp of the mean NLL over every predicted token."""
    t0, total, n = time.time(), 0.0, 0
    for w in windows:
        total += nll(logits_fn(w[:-1]), w[1:])
        n += len(w) - 1
    return {"ppl": math.exp(total / n), "nll": total / n, "tokens": n, "windows": len(windows),
            "seconds": time.time() - t0}


def torch_logits(model, ids: np.ndarray) -> np.ndarray:
    """ids (T,) -> fp32 logits (T, V) of a torch model in eval mode."""
    import torch
    dev = next(model.parameters()).device
    with torch.no_grad():
        return model(torch.from_numpy(ids)[None].to(dev))[0][0].float().cpu().numpy()


def eval_model(model, data_dir, c: EvalConfig = EvalConfig()) -> dict:
    model.eval()
    return perplexity(lambda ids: torch_logits(model, ids), val_windows(data_dir, c, model.cfg.max_seq_len))


def eval_checkpoint(checkpoint, data_dir=None, c: EvalConfig = EvalConfig(), tokenizer=None) -> dict:
    from . import checkpoint as ckpt
    model, _, training = ckpt.load(checkpoint, tokenizer=tokenizer)
    r = eval_model(model, data_dir or training.get("data_dir"), c)
    return dict(r, what="checkpoint", path=str(ckpt.resolve(checkpoint, need_tokenizer=False)),
                runtime="torch", n_params=model.num_params(), config=asdict(c))


def eval_artifact(art_dir, data_dir, c: EvalConfig = EvalConfig(), threads: int | None = None) -> dict:
    """Perplexity through the artifact's own runtime (the one its manifest names)."""
    from ..devices.runner import RuntimeMissing, open_runtime
    from ..manifest import verified
    m = verified(art_dir)
    try:
        rt = open_runtime(art_dir, m, threads)
    except RuntimeMissing as e:
        raise UserError(str(e)) from e
    r = perplexity(rt.prefill, val_windows(data_dir, c, m["model"]["max_seq_len"]))
    return dict(r, what="artifact", path=str(art_dir), runtime=m["runtime"], precision=m["precision"],
                target=m["target"], size_bytes=m["size_bytes"], n_params=m["n_params"], config=asdict(c))


def evaluate(checkpoint=None, artifact=None, data_dir=None, sets: dict | None = None, tokenizer=None) -> dict:
    """The `litelm-edge eval` entry point: exactly one of checkpoint / artifact."""
    from ..config import override
    if bool(checkpoint) == bool(artifact):
        raise UserError("pass exactly one of --checkpoint or --artifact")
    c = override(EvalConfig(), sets or {}, "--set (eval)")
    if checkpoint:
        return eval_checkpoint(checkpoint, data_dir, c, tokenizer)
    if not data_dir:  # the held-out split the artifact's checkpoint was trained beside
        from ..manifest import read_manifest
        t = Path(read_manifest(artifact)["checkpoint"]) / "training.json"
        data_dir = json.loads(t.read_text()).get("data_dir") if t.is_file() else None
    return eval_artifact(artifact, data_dir, c)
