"""Pruning: unstructured magnitude masks, and structured cuts that make a smaller ModelConfig.

Unstructured: zero the smallest |w| of the blocks' matrices (one global cut, or the same sparsity
per matrix, or everything under a threshold) and keep the zeros while fine-tuning: a gradient hook
multiplies each gradient by its mask, so AdamW's moments (and its decoupled decay) never move a
pruned weight. This makes the model sparse, NOT smaller or faster: dense runtimes (ORT, TVM,
LiteRT) store and multiply the zeros like any other value.

Structured: remove query heads (the same number in every KV group, so GQA holds), SwiGLU channels
or whole blocks. The result is a normal checkpoint of a smaller shape; every backend builds it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..config import UserError


@dataclass
class PruneConfig:
    sparsity: float = 0.0  # unstructured: fraction of the blocks' matrix weights set to zero
    threshold: float = 0.0  # unstructured: when > 0, zero every |w| < threshold instead
    scope: str = "global"  # unstructured: global (one cut over all matrices) or layer (per matrix)
    heads: float = 0.0  # structured: fraction of query heads removed from each KV group
    ffn: float = 0.0  # structured: fraction of SwiGLU channels removed from every block
    layers: int = 0  # structured: blocks removed (those whose absence hurts calibration loss least)


def prunable(model) -> dict:
    """name -> weight of the blocks' matrices (embeddings, lm_head and norms stay dense)."""
    return {n: p for n, p in model.named_parameters() if n.startswith("layers.") and p.dim() == 2}


@torch.no_grad()
def magnitude_masks(model, c: PruneConfig) -> dict:
    ws = prunable(model)
    if c.scope not in ("global", "layer"):
        raise UserError(f"unknown prune scope '{c.scope}', have: global, layer")
    if c.threshold > 0:
        return {n: (w.abs() >= c.threshold).float() for n, w in ws.items()}
    if not 0 <= c.sparsity < 1:
        raise UserError(f"sparsity must be in [0, 1), got {c.sparsity}")

    def cut(a):  # the k-th smallest |w|, k = sparsity * count
        k = int(c.sparsity * a.numel())
        return a.flatten().kthvalue(k).values if k else a.new_tensor(-1.0)
    if c.scope == "global":
        t = cut(torch.cat([w.abs().flatten() for w in ws.values()]))
        return {n: (w.abs() > t).float() for n, w in ws.items()}
    return {n: (w.abs() > cut(w.abs())).float() for n, w in ws.items()}


@torch.no_grad()
def apply_masks(model, masks: dict) -> list:
    """Zero the pruned weights and hook their gradients; returns hook handles (remove() after)."""
    params = dict(model.named_parameters())
    handles = []
    for n, m in masks.items():
        params[n].mul_(m)
        handles.append(params[n].register_hook(lambda g, n=n: g * _on(masks, n, g.device)))
    return handles


def _on(masks: dict, n: str, device):
    """masks[n] on `device`, moved there once (train() moves the model after the masks are made)."""
    if masks[n].device != device:
        masks[n] = masks[n].to(device)
    return masks[n]


def sparsity(model) -> float:
    ws = list(prunable(model).values())
    return sum(int((w == 0).sum()) for w in ws) / max(1, sum(w.numel() for w in ws))


@torch.no_grad()
def shrink_ffn(model, sd: dict, frac: float) -> int:
    """Keep the SwiGLU channels with the largest |gate| * |up| * |down| norms; returns width."""
    keep_n = max(1, round((1 - frac) * model.cfg.intermediate_size))
    for i in range(len(model.layers)):
        p = f"layers.{i}.mlp."
        g, u, d = sd[p + "gate_proj.weight"], sd[p + "up_proj.weight"], sd[p + "down_proj.weight"]
        keep = (g.norm(dim=1) * u.norm(dim=1) * d.norm(dim=0)).topk(keep_n).indices.sort().values
        sd[p + "gate_proj.weight"], sd[p + "up_proj.weight"] = g[keep], u[keep]
        sd[p + "down_proj.weight"] = d[:, keep]
    return keep_n


@torch.no_grad()
def shrink_heads(model, sd: dict, frac: float) -> int:
    """Remove the same number of query heads from every KV group; returns the new n_head."""
    c = model.cfg
    hd, rep = c.head_dim, c.n_head // c.n_kv_head
    keep_rep = max(1, round((1 - frac) * rep))
    for i in range(len(model.layers)):
        p = f"layers.{i}.self_attn."
        q, o = sd[p + "q_proj.weight"].view(c.n_head, hd, -1), sd[p + "o_proj.weight"].view(-1, c.n_head, hd)
        score = (q.flatten(1).norm(dim=1) * o.transpose(0, 1).flatten(1).norm(dim=1)).view(c.n_kv_head, rep)
        heads = torch.cat([g * rep + score[g].topk(keep_rep).indices.sort().values for g in range(c.n_kv_head)])
        sd[p + "q_proj.weight"] = q[heads].flatten(0, 1)
        sd[p + "o_proj.weight"] = o[:, heads].flatten(1)
        if p + "q_proj.bias" in sd:  # Qwen2: a query head's bias goes with its weights
            sd[p + "q_proj.bias"] = sd[p + "q_proj.bias"].view(c.n_head, hd)[heads].flatten()
        if p + "g_proj.weight" in sd:
            sd[p + "g_proj.weight"] = sd[p + "g_proj.weight"].view(c.n_head, hd, -1)[heads].flatten(0, 1)
    return c.n_kv_head * keep_rep


@torch.no_grad()
def layer_losses(model, x, y) -> list[float]:
    """Calibration loss with each block skipped in turn (x, y: (B, T) training windows)."""
    import torch.nn.functional as F
    from .model import rope_tables
    cos, sin = rope_tables(model.cfg, 0, x.shape[1])
    out = []
    for skip in range(model.cfg.n_layer):
        h = model.embed_tokens(x)
        for li in model.layer_order():
            if li != skip:
                h = model.layers[li](h, cos, sin)[0]
        logits = model.lm_head(model.norm(h))
        out.append(float(F.cross_entropy(logits.flatten(0, 1), y.flatten())))
    return out


def structured(model, c: PruneConfig, calib=None):
    """-> a new, smaller Transformer (fine-tune it afterwards)."""
    from .model import Transformer
    cfg, sd = model.cfg, {k: v.clone() for k, v in model.state_dict().items()}
    if (c.heads or c.layers) and cfg.share_every != 1:
        raise UserError("head/layer pruning needs share_every = 1: prune before sharing layers")
    changes = {}
    if c.ffn:
        changes["intermediate_size"] = shrink_ffn(model, sd, c.ffn)
    if c.heads:
        changes["n_head"], changes["head_size"] = shrink_heads(model, sd, c.heads), cfg.head_dim
    if c.layers:
        if c.layers >= cfg.n_layer or calib is None:
            raise UserError(f"layers = {c.layers}: can remove at most n_layer - 1 = {cfg.n_layer - 1} blocks")
        losses = layer_losses(model, *calib)
        drop = sorted(range(cfg.n_layer), key=losses.__getitem__)[: c.layers]
        kept = [i for i in range(cfg.n_layer) if i not in drop]
        sd = {_renumber(k, kept): v for k, v in sd.items() if not _dropped(k, drop)}
        changes["n_layer"] = len(kept)
    small = Transformer(dataclasses.replace(cfg, **changes))
    small.load_state_dict(sd)
    return small


def _dropped(key: str, drop: list[int]) -> bool:
    return key.startswith("layers.") and int(key.split(".")[1]) in drop


def _renumber(key: str, kept: list[int]) -> str:
    if not key.startswith("layers."):
        return key
    _, i, rest = key.split(".", 2)
    return f"layers.{kept.index(int(i))}.{rest}"
