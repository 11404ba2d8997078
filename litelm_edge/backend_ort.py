"""ONNX Runtime backend (target x86 and any CPU with an ORT wheel).

One ONNX graph, `decoder.onnx`, serves both entry points and stores the weights once:
  prefill: input_ids (1, T) with empty past (P = 0)  -> logits (1, T, V), present k/v (L, 1, nkv, T, hd)
  decode:  input_ids (1, 1) with the past of length P -> logits (1, 1, V), present k/v of length P+1
T and P are dynamic (RoPE and mask come from torch.arange inside the graph).
int8 is ORT dynamic quantisation: per-channel int8 weights for MatMul and Gather (embeddings),
activations quantised per call.
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import UserError

GRAPH = "decoder.onnx"


def _decoder(model):
    import torch

    class Decoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, past_k, past_v):
            return self.m.forward_cached(input_ids, past_k, past_v)

    return Decoder(model).eval()


def export_onnx(model, path: Path, log=print):
    """torch.export (dynamo) -> ONNX with dynamic T and P; weights beside the graph (.data)."""
    import torch
    from torch.export import Dim
    c = model.cfg
    ids = torch.randint(0, c.vocab_size, (1, 8))
    shape = (c.n_layer, 1, c.n_kv_head, 4, c.head_dim)
    # two distinct tensors: torch.export would merge identical example inputs into one
    past = (torch.zeros(shape), torch.ones(shape))
    T, P = Dim("T", min=1, max=c.max_seq_len), Dim("P", min=0, max=c.max_seq_len)
    log(f"exporting ONNX graph to {path.name} ...")
    torch.onnx.export(_decoder(model), (ids, *past), str(path), dynamo=True, optimize=True, verbose=False,
                      input_names=["input_ids", "past_k", "past_v"],
                      output_names=["logits", "present_k", "present_v"],
                      dynamic_shapes={"input_ids": {1: T}, "past_k": {3: P}, "past_v": {3: P}})


def fold_weight_transposes(src: Path, dst: Path):
    """Replace Transpose(initializer) nodes by transposed initializers.

    The exporter folds these itself, except for a weight used by several layers (cross-layer
    sharing): there the MatMul's weight arrives through a Transpose node, and ORT's quantiser,
    which quantises only initializer inputs, would leave the shared weights in float.
    """
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses = {}
    for n in g.node:
        for x in n.input:
            uses[x] = uses.get(x, 0) + 1
    # a weight also read untransposed stays as it is: the tied embedding, which the Gather reads
    # and lm_head reaches through a Transpose, would otherwise be stored twice once quantised
    for node in [n for n in g.node if n.op_type == "Transpose" and uses.get(n.input[0]) == 1 and n.input[0] in inits]:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        w = numpy_helper.to_array(inits[node.input[0]], base_dir=str(src.parent))
        g.initializer.append(numpy_helper.from_array(w.transpose(perm).copy(), node.output[0]))
        g.node.remove(node)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")


def quantize_int8(src: Path, dst: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    folded = src.with_name("folded.onnx")
    fold_weight_transposes(src, folded)
    quantize_dynamic(str(folded), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gather"])
    dedupe_initializers(dst)


def dedupe_initializers(path: Path):
    """The quantiser writes one int8 copy of a weight per MatMul using it; keep one per content."""
    import hashlib
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    g = model.graph
    first, alias = {}, {}
    for init in g.initializer:
        key = (init.data_type, tuple(init.dims), hashlib.sha256(numpy_helper.to_array(init).tobytes()).hexdigest())
        alias[init.name] = first.setdefault(key, init.name)
    for node in g.node:
        for i, x in enumerate(node.input):
            if alias.get(x, x) != x:
                node.input[i] = alias[x]
    keep = [i for i in g.initializer if alias[i.name] == i.name]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.save(model, str(path))


def weight_bytes(path: Path) -> dict:
    """{dtype name: bytes} of the graph's initializers, read back from the file written."""
    import onnx
    from onnx import helper, numpy_helper
    out = {}
    for init in onnx.load(str(path)).graph.initializer:
        name = helper.tensor_dtype_to_np_dtype(init.data_type).name
        out[name] = out.get(name, 0) + numpy_helper.to_array(init, base_dir=str(path.parent)).nbytes
    return out


def build(ctx) -> dict:
    import logging
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantiser warns through the root logger
    if ctx.precision not in ("fp32", "int8"):
        raise UserError(f"unknown precision '{ctx.precision}' for onnxruntime, have: fp32, int8")
    out = Path(ctx.out_dir)
    if ctx.precision == "fp32":
        export_onnx(ctx.model, out / GRAPH, ctx.log)
    else:
        work = out / ".fp32"
        work.mkdir()
        export_onnx(ctx.model, work / GRAPH, ctx.log)
        ctx.log("quantising to int8 (dynamic, per-channel weights) ...")
        quantize_int8(work / GRAPH, out / GRAPH)
        for p in work.iterdir():
            os.remove(p)
        work.rmdir()
    return {"runtime": "onnxruntime", "weight_bytes": weight_bytes(out / GRAPH), "tools": ("onnx", "onnxruntime", "onnxscript"),
            "extra": {"graphs": {"decoder": GRAPH}, "entry_points": {
                "prefill": "decoder.onnx with past length 0", "decode": "decoder.onnx with T = 1"}}}
