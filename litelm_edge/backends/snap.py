"""GPTQ onto a symmetric INT4 grid that the backends' own quantizers re-quantize without a change:
ai-edge-quantizer's (litert: every INT4 precision, in blocks of 32 or 64 or per output channel, the
tied LM head too where it is INT4), TVM's int4-b32 layout (tvm int4-gptq: graph.quantize_int4, scale
max|w_block| / 7 in float32, the same blocks of 32 along the input); ORT's MatMulNBits (x86
int4-gptq) takes the codes and scales as they are (ort/gptq.py).

ai-edge-quantizer quantizes a FULLY_CONNECTED weight (out, in) in symmetric INT4 blocks of 32
along `in` by round-to-nearest (uniform_quantize_tensor.tensor_zp_scale_from_min_max and
uniform_quantize, 0.10.0):

    s = fp16(bf16(max|w_block| / 7))        # float32 math, then the 7-bit-mantissa scale
    q = clip(rint(w / s), -8, 7)

So a block whose values are q * s, with every |q| <= 7 and one |q| == 7, on a scale s that
bf16 and fp16 both hold, comes back as the same q and s: max|w| / 7 is s exactly in float32 (q
has 3 bits, s 8), and w / s is q exactly. -8 is out: a -8 * s would make the bound 8 s and the
scale 8/7 s (the quantizer's own RTN never reaches -8 either). GPTQ (Frantar et al. 2022) then
chooses the codes: columns in order (or by decreasing input energy, act_order, with every group's
scale fixed before any column moves), each group of 32 gets its scales before its columns are
quantized (the row's largest |w| pinned to +-7 so that the quantizer recomputes them), and the
rounding error of a column moves onto the columns not yet quantized through the Cholesky factor of
the inverse Hessian H = 2 X^T X (X: calibration inputs of the layer, damped 1 % of its mean diagonal).

Per output channel (CHANNELWISE, int4-ch's layers) the quantizer keeps s = max|w_row| / 7 in float32,
unrounded; a snapped row's scale is still taken on the bf16 / fp16 grid, where 7 s and 7 s / 7 are
exact (3 + 8 significant bits), so the round trip is the identity there too; the row's columns are
quantized 32 at a time with the row's one scale fixed first. The tied LM head / embedding, where a
precision keeps it INT4, is GPTQ'd last on the final norm's outputs in its own blocks.

Why not ai-edge-quantizer's own GPTQ: its scales are min-max ones (no search, the scale is not
fixed before a group's columns move), and it calibrates per signature through the .tflite, not layer
by layer with the layers before already quantized. Torch and numpy only: runs in the main env.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import UserError

BLOCK, QMAX = 32, 7  # ai-edge-quantizer's BLOCKWISE_32, the largest code a block may hold
FP16_TINY = 2.0 ** -14  # smallest normal fp16: scales stay at or above it (subnormals lose bits)
RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)  # scale = ratio * max|w| / 7 candidates, the rest clipped


def grid(s: torch.Tensor) -> torch.Tensor:
    """A scale on the quantizer's grid: float32 -> bf16 -> fp16 -> float32, as it stores blockwise scales."""
    return s.float().to(torch.bfloat16).to(torch.float16).float()


def rtn(w: torch.Tensor, block: int | None = BLOCK) -> torch.Tensor:
    """What the quantizer makes of w (out, in): its INT4 round-to-nearest blocks (block None: one scale
    per output channel, kept in float32), dequantized."""
    wb = w.float().reshape(w.shape[0], -1, block or w.shape[1])
    s = wb.abs().amax(-1, keepdim=True).clamp_min(1e-9) / QMAX
    s = grid(s) if block else s
    return ((wb / s).round().clamp(-QMAX - 1, QMAX) * s).reshape(w.shape)


def _codes(w: torch.Tensor, s: torch.Tensor, pin: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Codes of w (rows, k) on scales s (rows, 1): round to nearest in [-7, 7], the pinned
    column of each row (pin: (rows, k) bool) at sign * 7."""
    q = (w / s).round().clamp(-QMAX, QMAX)
    return torch.where(pin, sign * QMAX, q)


def group_scales(w: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a group w (rows, 32): the scale (rows, 1) on the grid, among RATIOS of max|w| / 7, with the
    least weighted error sum(weight * (w - q s)^2) (weight: (32,), diag(H)), the pinned element
    (rows, 32) bool (each row's largest |w|) and its sign (rows, 1)."""
    a = w.abs()
    amax, idx = a.max(-1, keepdim=True)
    pin = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, idx, True)
    sign = torch.where(w.gather(-1, idx) < 0, -1.0, 1.0)
    best_s, best_e = None, None
    for r in RATIOS:
        s = grid((amax * r / QMAX).clamp_min(FP16_TINY)).clamp_min(FP16_TINY)
        e = ((w - _codes(w, s, pin, sign) * s) ** 2 * weight).sum(-1, keepdim=True)
        if best_s is None:
            best_s, best_e = s, e
        else:
            better = e < best_e
            best_s, best_e = torch.where(better, s, best_s), torch.where(better, e, best_e)
    return best_s, pin, sign


def _static_scales(W: torch.Tensor, weight: torch.Tensor, block: int):
    """group_scales of every group of W as it is, spread over its columns: (rows, n) each."""
    parts = [group_scales(W[:, g:g + block], weight[g:g + block]) for g in range(0, W.shape[1], block)]
    return (torch.cat([s.expand(-1, block) for s, _, _ in parts], 1), torch.cat([p for _, p, _ in parts], 1),
            torch.cat([sg.expand(-1, block) for _, _, sg in parts], 1))


def gptq(w: torch.Tensor, H: torch.Tensor, damp: float = 0.01, block: int | None = BLOCK,
         act_order: bool = False) -> torch.Tensor:
    """w (out, in) float, H (in, in) = 2 X^T X -> the dequantized snapped weight (out, in) float32,
    every block of it a fixed point of the quantizer's INT4 re-quantization (`on_grid`).
    block None: one scale per output channel (the quantizer's CHANNELWISE), chosen from the row as it
    is before any column moves; its columns are still quantized 32 at a time (lazy updates).
    act_order: columns by decreasing H diagonal (the inputs with the most energy first), every
    group's scale fixed from the unquantized weights before any column moves ("static groups")."""
    W = w.detach().clone().float()
    n = W.shape[1]
    group, block = block or n, BLOCK
    if n % group:
        raise ValueError(f"input width {n} is not a multiple of the block {group}")
    H = H.detach().double().clone()
    dead = torch.diag(H) == 0  # inputs never seen: their weights do not matter
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(n, dtype=H.dtype)
    weight = torch.diag(H).float()
    perm = torch.argsort(weight, descending=True) if act_order else torch.arange(n)
    static = [t[:, perm] for t in _static_scales(W, weight, group)] if act_order or group != block else None
    W, H = W[:, perm], H[perm][:, perm]
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    out = torch.zeros_like(W)
    for g in range(0, n, block):
        W1, U1 = W[:, g:g + block], U[g:g + block, g:g + block]  # W1 is a view: updated in place
        if static:  # columns of several groups: each column's own group's scale
            s, pin, sign = (t[:, g:g + block] for t in static)
        else:  # one group: its scale from its columns as the ones before left them
            s, pin, sign = group_scales(W1, weight[g:g + block])
            s, sign = s.expand(-1, block), sign.expand(-1, block)
        err = torch.zeros_like(W1)
        for j in range(W1.shape[1]):  # block, or fewer: a per-channel row's last columns
            q = _codes(W1[:, j:j + 1], s[:, j:j + 1], pin[:, j:j + 1], sign[:, j:j + 1])
            out[:, g + j] = (q * s[:, j:j + 1])[:, 0]
            e = (W1[:, j] - out[:, g + j]) / U1[j, j]
            W1[:, j:] -= e[:, None] * U1[j, j:][None, :]
            err[:, j] = e
        W[:, g + block:] -= err @ U[g:g + block, g + block:]
    return out[:, torch.argsort(perm)]


def on_grid(w: torch.Tensor, block: int | None = BLOCK) -> bool:
    """True when the quantizer's round-to-nearest reproduces w exactly (`rtn(w) == w`)."""
    return bool(torch.equal(rtn(w, block), w.float()))


def output_error(w: torch.Tensor, w_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W - W^) H (W - W^)^T): the layer's squared output error on the calibration inputs."""
    d = (w.double() - w_hat.double())
    return float(((d @ H.double()) * d).sum())


class Hessian:
    """2 X^T X / n over the rows of every X added (X: (..., in))."""

    def __init__(self, n_in: int):
        self.H, self.n = torch.zeros(n_in, n_in, dtype=torch.float64), 0

    def add(self, x: torch.Tensor):
        x = x.reshape(-1, x.shape[-1]).double()
        self.H += 2 * x.T @ x
        self.n += x.shape[0]

    def get(self) -> torch.Tensor:
        return self.H / max(self.n, 1)


# each block's linears in the order GPTQ quantizes them: those sharing an input together
STAGES = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.g_proj"),
          ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


def _input_hessian(block, x, cos, sin, linear, chunk: int) -> torch.Tensor:
    """H of `linear`'s input while `block` runs on x (B, T, C), in chunks of windows."""
    h = Hessian(linear.in_features)
    hook = linear.register_forward_pre_hook(lambda mod, args: h.add(args[0]))
    try:
        for i in range(0, x.shape[0], chunk):
            block(x[i:i + chunk], cos, sin)
    finally:
        hook.remove()
    return h.get()


@torch.no_grad()
def quantize_model(model, windows: torch.Tensor, damp: float = 0.01, chunk: int = 16, act_order: bool = True,
                   group: int | None = BLOCK, head: int | None = None,
                   log=lambda msg: None) -> tuple[dict, dict]:
    """GPTQ every block's linears in place, layer by layer (a layer's inputs come from the blocks
    before it, already quantized; within a block, each stage's from the stages before it).
    windows: (N, T) token ids; group: gptq's block; head: the LM head's block when it is snapped too
    (on the final norm's outputs; tied, the embedding gets the same weights), None: left as it is.
    Returns ({parameter name: snapped weight}, {name: error vs RTN's})."""
    from ..pipeline.model import rope_tables
    widths = sorted({m.in_features for m in model.layers.modules() if isinstance(m, torch.nn.Linear)})
    for blk, have in ((group, widths), (head, [model.cfg.n_embd] if head else [])):
        if blk and any(n % blk for n in have):
            raise UserError(f"INT4 blocks of {blk} need input widths that are multiples of {blk}, have {have}: "
                            "build an 8-bit precision (or android's per-channel int4-ch)")
    model.eval()
    cos, sin = rope_tables(model.cfg, 0, windows.shape[1])
    x = torch.cat([model.embed_tokens(windows[i:i + chunk]) for i in range(0, len(windows), chunk)])
    snapped, ratio, done = {}, {}, set()
    for li in model.layer_order():
        block = model.layers[li]
        for stage in STAGES if li not in done else ():
            mods = [(n, block.get_submodule(n)) for n in stage if _has(block, n)]
            H = _input_hessian(block, x, cos, sin, mods[0][1], chunk)
            for n, mod in mods:
                w = mod.weight.data
                q = gptq(w, H, damp, group, act_order=act_order)
                e_rtn = output_error(w, rtn(w, group), H)
                ratio[f"layers.{li}.{n}"] = output_error(w, q, H) / max(e_rtn, 1e-30)
                mod.weight.data = q
                snapped[f"layers.{li}.{n}.weight"] = q.numpy()
        done.add(li)
        x = torch.cat([block(x[i:i + chunk], cos, sin)[0] for i in range(0, len(x), chunk)])
        mine = {k.rsplit(".", 1)[-1]: v for k, v in ratio.items() if k.startswith(f"layers.{li}.")}
        log(f"gptq: layer {li}: output error vs RTN " + " ".join(f"{k} {v:.2f}" for k, v in mine.items()))
    if head is not None:
        h = Hessian(model.cfg.n_embd)
        for i in range(0, len(x), chunk):
            h.add(model.norm(x[i:i + chunk]))
        H, w = h.get(), model.lm_head.weight.data
        q = gptq(w, H, damp, head, act_order=act_order)
        ratio["lm_head"] = output_error(w, q, H) / max(output_error(w, rtn(w, head), H), 1e-30)
        model.lm_head.weight.data = q
        snapped["lm_head.weight"] = q.numpy()
        log(f"gptq: LM head: output error vs RTN {ratio['lm_head']:.2f}")
    return snapped, ratio


def _has(block, name: str) -> bool:
    parent, _, leaf = name.rpartition(".")
    return getattr(block.get_submodule(parent), leaf, None) is not None


def train_windows(data_dir: Path | None, n: int, T: int) -> np.ndarray:
    """n evenly spaced windows of T tokens from train.bin: (n, T) int64."""
    from ..pipeline.data import token_memmap
    train = Path(data_dir or "") / "train.bin"
    if not data_dir or not train.is_file():
        raise UserError(f"int4-gptq calibrates on '{train}', which is missing: pass --data DIR made by "
                        "`litelm-edge data`")
    ids = token_memmap(train)
    if len(ids) < n * T:
        raise UserError(f"{train} holds {len(ids)} tokens, fewer than {n} x {T}: --set gptq_windows=N "
                        "or gptq_len=N smaller")
    return np.stack([np.asarray(ids[s:s + T], np.int64) for s in np.linspace(0, len(ids) - T, n).astype(int)])


def run(ctx, block: int | None = BLOCK, head: int | None = None) -> tuple[dict, dict]:
    """GPTQ on a copy of the model (ctx.model stays the float reference of the gate). ctx: a
    BuildContext whose settings are GptqSettings; block: the quantizer's INT4 blocks along the input,
    None: per output channel; head: the LM head's block when it is snapped too, else None. Returns
    ({parameter name: weight (out, in) float32}, what the manifest records of the calibration)."""
    import copy
    import time
    s = ctx.settings
    windows = train_windows(ctx.data_dir, s.gptq_windows, min(s.gptq_len, ctx.model.cfg.max_seq_len))
    t0 = time.time()
    ctx.log(f"GPTQ on {len(windows)} x {windows.shape[1]} train.bin tokens, layer by layer")
    weights, ratio = quantize_model(copy.deepcopy(ctx.model), torch.from_numpy(windows),
                                    act_order=s.gptq_act_order, group=block, head=head, log=ctx.log)
    r = np.array(list(ratio.values()))
    return weights, {
        "data": str(Path(ctx.data_dir) / "train.bin"), "windows": int(windows.shape[0]),
        "window_len": int(windows.shape[1]), "damp": 0.01, "block": block or "channel",
        "head": f"blocks of {head}" if head else "not snapped",
        "order": "act (static groups)" if s.gptq_act_order else "columns",
        "scale_ratios": list(RATIOS), "sequential": "layer by layer, quantized inputs",
        "output_error_vs_rtn": {"median": round(float(np.median(r)), 4), "max": round(float(r.max()), 4)},
        "seconds": round(time.time() - t0, 1)}


def snap_weights(ctx, path: Path, check=None, block: int | None = BLOCK, head: int | None = None) -> dict:
    """`run`, its weights written to path (npz) for a converter in another process. check: called with
    {name: weight} before they are written, returns the manifest's "snapped" record (or raises).
    Returns what the manifest records of it."""
    weights, record = run(ctx, block, head)
    checked = {"snapped": check(weights)} if check else {}
    with open(path, "wb") as f:  # a temporary folder: no partial file outlives the build
        np.savez(f, **weights)
    return record | checked
