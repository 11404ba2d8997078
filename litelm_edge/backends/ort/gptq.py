"""x86 int4-gptq: GPTQ's codes (backends/snap.py) written into the builder's 4-bit MatMulNBits weights.

onnxruntime-genai's builder quantizes by round-to-nearest only (its 0.18 algorithms: default, rtn,
k_quant), so the build runs GPTQ itself, as the android and rpi4 backends do, and replaces each
layer projection's initializers in the builder's graph. ORT's MatMulNBits 4-bit layout, as the
builder writes it for a symmetric graph (read back from its output; the contrib op's documented form):

    B       uint8 (N, K / 32, 16): the codes of one block of 32 along K, two a byte, low nibble first
    scales  float32 (N, K / 32)
    (no zero_points input: every block's zero point is 8)        w[n, k] = (code - 8) * scale

GPTQ's weights are q * s with |q| <= 7 and s = max|w_block| / 7 exactly (snap.py's grid), so a code
is q + 8 and the scale is s: the graph holds GPTQ's weights bit for bit (`encode` checks it). The
builder fuses q, k, v into one qkv_proj and gate, up into one gate_up_proj (in that order along N);
rows are quantized independently, so the fused weight is the parts' rows stacked.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

BLOCK, ZERO = 32, 8
# the builder's fused projection -> our linears in its row order (checked against the builder's own
# round-to-nearest weights: a wrong order or part would not match them)
FUSED = {"attn/qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "attn/o_proj": ("self_attn.o_proj",),
         "mlp/gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
         "mlp/down_proj": ("mlp.down_proj",)}
NODE = re.compile(r"/model/layers\.(\d+)/(attn/\w+|mlp/\w+)/MatMul")


def encode(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w (N, K) float32 on snap.py's grid -> (B (N, K/32, 16) uint8, scales (N, K/32) float32)."""
    n, k = w.shape
    wb = w.astype(np.float32).reshape(n, k // BLOCK, BLOCK)
    s = np.abs(wb).max(-1) / np.float32(7)
    s = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    q = np.rint(wb / s[..., None])
    if np.abs(q).max() > 7 or not np.array_equal(q * s[..., None], wb):
        raise RuntimeError("a GPTQ weight is not on the 4-bit grid (|q| <= 7, scale max|w| / 7)")
    c = (q + ZERO).astype(np.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4), s


def decode(b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """encode's inverse: (N, K) float32."""
    c = np.stack([b & 15, b >> 4], -1).reshape(*b.shape[:2], BLOCK).astype(np.float32)
    return ((c - ZERO) * s[..., None]).reshape(b.shape[0], -1)


def write(graph: Path, weights: dict) -> dict:
    """Replace the 4-bit layer projections of the builder's graph (decoder.onnx, weights beside it) with
    GPTQ's (weights: snap.py's {"layers.I.NAME.weight": (out, in)}); every one must be there.
    Returns the manifest's "snapped" record."""
    import onnx
    from onnx import numpy_helper as nh

    from .fused import save
    model = onnx.load(str(graph))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    done = 0
    for node in g.node:
        m = NODE.match(node.name)
        if node.op_type != "MatMulNBits" or not m or m.group(2) not in FUSED:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        if attrs.get("bits") != 4 or attrs.get("block_size") != BLOCK or len(node.input) > 3:
            raise RuntimeError(f"{node.name}: not the symmetric 4-bit blocks of {BLOCK} that int4-gptq "
                               "writes")
        w = np.concatenate([weights[f"layers.{m.group(1)}.{p}.weight"] for p in FUSED[m.group(2)]])
        b_name, s_name = node.input[1], node.input[2]
        scales = nh.to_array(inits[s_name])
        rtn = decode(nh.to_array(inits[b_name]), scales.reshape(w.shape[0], -1))
        if rtn.shape != w.shape or np.linalg.norm(rtn - w) > 0.5 * np.linalg.norm(w):
            raise RuntimeError(f"{node.name}: the builder's weight does not match GPTQ's {FUSED[m.group(2)]}")
        b, s = encode(w)
        inits[b_name].CopyFrom(nh.from_array(b, b_name))
        inits[s_name].CopyFrom(nh.from_array(s.reshape(scales.shape), s_name))
        done += len(FUSED[m.group(2)])
    if done != len(weights):
        raise RuntimeError(f"int4-gptq: {done} of {len(weights)} GPTQ weights found in the builder's graph")
    save(model, graph)
    return {"weights": done, "lossless": done}  # encode raised unless every one is exact
