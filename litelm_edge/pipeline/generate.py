"""generate: text from a checkpoint (torch) or from a built artifact (its runtime, on this host)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def sample_np(logits: np.ndarray, temperature: float, top_k: int | None, rng) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    z = logits.astype(np.float64) / temperature
    if top_k:
        z[z < np.sort(z)[-min(top_k, z.size)]] = -np.inf
    p = np.exp(z - z.max())
    return int(rng.choice(z.size, p=p / p.sum()))


def generate_artifact(art_dir: Path, ids: list[int], n: int, temperature: float, top_k, seed: int, eot: int) -> list[int]:
    from ..devices.runner import open_runtime, prefill_last
    from ..manifest import verified
    m = verified(art_dir)
    rt, rng = open_runtime(art_dir, m), np.random.default_rng(seed)
    room = m["model"]["max_seq_len"] - len(ids)
    out, logits = list(ids), prefill_last(rt, np.array(ids, np.int64))
    for _ in range(min(n, room)):
        tok = sample_np(logits, temperature, top_k, rng)
        out.append(tok)
        if tok == eot:
            break
        logits = rt.decode(tok)
    return out


def generate(source, prompt: str, max_new_tokens=64, temperature=0.0, top_k=None, seed=0, from_artifact=False) -> str:
    from .tokenizer import Tokenizer
    if from_artifact:
        from ..manifest import verified
        verified(source)  # before the tokenizer is read
        tok = Tokenizer.load(Path(source) / "tokenizer.json")
        ids = tok.encode(prompt)
        out = generate_artifact(Path(source), ids, max_new_tokens, temperature, top_k, seed, tok.eot_id)
    else:
        import torch
        from . import checkpoint as ckpt
        model, tok_json, _ = ckpt.load(source)
        tok = Tokenizer(tok_json)
        g = torch.Generator().manual_seed(seed)
        x = torch.tensor([tok.encode(prompt)])
        out = model.generate(x, max_new_tokens, temperature, top_k, tok.eot_id, g)[0].tolist()
    return tok.decode(out)
