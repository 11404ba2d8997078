"""generate: text from a checkpoint (torch) or from a built artifact (its runtime, on this host).

Both paths hold the prompt to the model's positions the same way (fit_prompt): an empty prompt, or
one that fills every position, is refused with one line; new tokens stop where the positions end,
with a notice saying so.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import UserError


def fit_prompt(n_prompt: int, n_new: int, max_seq_len: int, log=print) -> int:
    """How many new tokens fit after a prompt of n_prompt tokens (refused when none do)."""
    if n_prompt == 0:
        raise UserError("the prompt encodes to no tokens: pass a non-empty --prompt")
    if n_prompt >= max_seq_len:
        raise UserError(f"the prompt has {n_prompt} tokens and the model holds {max_seq_len} positions: "
                        f"shorten --prompt to at most {max_seq_len - 1} tokens")
    room = max_seq_len - n_prompt
    if n_new > room:
        log(f"note: {room} new tokens, not {n_new}: the prompt's {n_prompt} tokens and the model's "
            f"{max_seq_len} positions leave room for {room}")
    return min(n_new, room)


def sample_np(logits: np.ndarray, temperature: float, top_k: int | None, rng) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    z = logits.astype(np.float64) / temperature
    if top_k:
        z[z < np.sort(z)[-min(top_k, z.size)]] = -np.inf
    p = np.exp(z - z.max())
    return int(rng.choice(z.size, p=p / p.sum()))


def generate_artifact(art_dir: Path, ids: list[int], n: int, temperature: float, top_k, seed: int, eot: int,
                      log=print) -> list[int]:
    from ..devices.runner import open_runtime, prefill_last
    from ..manifest import verified
    m = verified(art_dir)
    n = fit_prompt(len(ids), n, m["model"]["max_seq_len"], log)
    rt, rng = open_runtime(art_dir, m), np.random.default_rng(seed)
    out, logits = list(ids), prefill_last(rt, np.array(ids, np.int64))
    for _ in range(n):
        tok = sample_np(logits, temperature, top_k, rng)
        out.append(tok)
        if tok == eot:
            break
        logits = rt.decode(tok)
    return out


def generate(source, prompt: str, max_new_tokens=64, temperature=0.0, top_k=None, seed=0, from_artifact=False,
             log=print) -> str:
    from .tokenizer import Tokenizer
    if max_new_tokens < 0 or not math.isfinite(temperature) or (top_k is not None and top_k < 1):
        raise UserError(f"--max-new-tokens must be >= 0, --temperature finite and --top-k >= 1; got "
                        f"{max_new_tokens}, {temperature}, {top_k}")
    if from_artifact:
        from ..manifest import verified
        verified(source)  # before the tokenizer is read
        tok = Tokenizer.load(Path(source) / "tokenizer.json")
        ids = tok.encode(prompt)
        out = generate_artifact(Path(source), ids, max_new_tokens, temperature, top_k, seed, tok.eot_id, log)
    else:
        import torch
        from . import checkpoint as ckpt
        model, tok_json, _ = ckpt.load(source)
        tok = Tokenizer(tok_json)
        g = torch.Generator().manual_seed(seed)
        ids = tok.encode(prompt)
        n = fit_prompt(len(ids), max_new_tokens, model.cfg.max_seq_len, log)
        out = model.generate(torch.tensor([ids]), n, temperature, top_k, tok.eot_id, g)[0].tolist()
    return tok.decode(out)
