"""Cross-layer weight sharing by conversion: merge groups of consecutive trained blocks into one.

At training time sharing is a model setting (`--set model.share_every=2`: positions 0,1 run block
0, positions 2,3 block 1, ...). Converting a trained model averages (or takes the first of) each
group's weights into one block of a `share_every = k` model with the same depth; fine-tune after.
Exported graphs still run n_layer blocks: the saving is in parameters and artifact bytes, not time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..config import UserError


@dataclass
class ShareConfig:
    every: int = 2  # consecutive layers that will share one block's weights
    merge: str = "mean"  # mean: average the group's weights; first: keep the group's first block


@torch.no_grad()
def merge_layers(model, c: ShareConfig):
    """-> a new Transformer with share_every = c.every, initialised from `model`'s blocks."""
    from .model import Transformer
    cfg = model.cfg
    if cfg.share_every != 1:
        raise UserError(f"the model already shares layers (share_every = {cfg.share_every}): convert an "
                        "unshared one")
    if c.every < 2 or c.merge not in ("mean", "first"):
        raise UserError(f"share every = {c.every}, merge = '{c.merge}': need every >= 2 and merge mean or "
                        "first")
    shared = Transformer(dataclasses.replace(cfg, share_every=c.every))
    sd = model.state_dict()
    out = {k: v for k, v in sd.items() if not k.startswith("layers.")}
    for u in range(shared.cfg.n_unique_layers):
        group = [i for i in range(cfg.n_layer) if i // c.every == u]
        if c.merge == "first":
            group = group[:1]
        for k in shared.layers[u].state_dict():
            out[f"layers.{u}.{k}"] = torch.stack([sd[f"layers.{i}.{k}"] for i in group]).mean(0)
    shared.load_state_dict(out)
    return shared
