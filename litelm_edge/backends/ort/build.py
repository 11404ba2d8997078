"""ONNX Runtime backend, build side: a checkpoint -> decoder.onnx (the table is in __init__.py).

Two graphs. The default, "fused" (fused.py): ORT's contrib operators as onnxruntime-genai's model
builder emits them (GroupQueryAttention over a KV buffer shared by past and present, MatMulNBits or
ORT's dynamic W8A8 for int8, a quantised LM head), for every precision on models the builder can
express. "export" (below, `--set build.graph=export`): the torch.export graph, for what the builder
cannot express (a gated attention output, pruned heads, layers that share weights).

The export graph, `decoder.onnx`, serves both entry points and stores the weights once:
  prefill: input_ids (1, T) with empty past (P = 0)  -> logits (1, T, V), present k/v (L, 1, nkv, T, hd)
  decode:  input_ids (1, 1) with the past of length P -> logits (1, 1, V), present k/v of length P+1
T and P are dynamic (RoPE and mask come from torch.arange inside the graph).
Precisions:
  int8       ORT dynamic quantisation (W8A8): per-channel int8 MatMul weights, each MatMul input
             quantised to one uint8 grid per call; export graph: the embedding Gather uint8 per
             tensor; fused graph: the embedding reads the LM head's int8 columns (fused.w8a8).
  int8-b32   weight-only int8 in blocks of 32 along K (ORT's MatMulNBits, accuracy level 4: the
             kernel rounds activations to int8 per block of 32 at run time, far finer than one grid
             per call); lm_head gets its own copy of the tied embedding, quantised the same way,
             and the Gather keeps a uint8 per-tensor copy. int8-b32 matches fp32 perplexity.
  int4-*     the builder's recipes (k-quant, an 8-bit head, Q4_K_M's mix: the row's options), made
             by the fused graph only; the export graph refuses them in one line.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...config import UserError
from .. import BackendBuild, BuildContext
from . import BACKEND

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


def fold_weight_transposes(src: Path, dst: Path, untie: bool = False):
    """Replace Transpose(initializer) nodes by transposed initializers.

    The exporter folds these itself, except for a weight used by several layers (cross-layer
    sharing): there the MatMul's weight arrives through a Transpose node, and ORT's quantiser,
    which quantises only initializer inputs, would leave the shared weights in float.
    untie: also fold a weight that is read untransposed elsewhere (the tied embedding): lm_head
    then gets its own (C, V) copy.
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
    for node in [n for n in g.node if n.op_type == "Transpose" and n.input[0] in inits
                 and (untie or uses.get(n.input[0]) == 1)]:
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
    """W8A8 MatMuls (fused.quantize_w8a8), then the Gather as uint8 (a lookup: no product to saturate)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from .fused import quantize_w8a8
    folded, matmuls = src.with_name("folded.onnx"), src.with_name("w8a8.onnx")
    fold_weight_transposes(src, folded)
    quantize_w8a8(folded, matmuls)
    quantize_dynamic(str(matmuls), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"])
    dedupe_initializers(dst)


def quantize_blocks(src: Path, dst: Path, bits: int, block: int):
    """Weight-only int{bits} MatMuls in blocks along K (MatMulNBits), then the Gather as uint8."""
    import logging
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    folded, blocked = src.with_name("folded.onnx"), src.with_name("blocked.onnx")
    fold_weight_transposes(src, folded, untie=True)
    level = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level.setLevel(logging.ERROR)  # one INFO line per node otherwise
    q = MatMulNBitsQuantizer(onnx.load(str(folded)), bits=bits, block_size=block, is_symmetric=True,
                             accuracy_level=4)
    q.process()
    q.model.save_model_to_file(str(blocked), use_external_data_format=True)
    quantize_dynamic(str(blocked), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"])
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
        key = (init.data_type, tuple(init.dims),
               hashlib.sha256(numpy_helper.to_array(init).tobytes()).hexdigest())
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


SNAPPED = ("int4-gptq",)  # the precisions whose layer weights GPTQ chooses (backends/snap.py, gptq.py)


def _snap(ctx: BuildContext):
    from .. import snap  # torch: imported by the precisions that run GPTQ only
    return snap.run(ctx)


def graph_kind(ctx: BuildContext) -> str:
    """'fused' (fused.py) where the builder can express the model and precision, else 'export'
    (torch.export, below); --set ort.graph=export forces the latter."""
    from . import fused
    want = ctx.settings.graph
    why = fused.unsupported(ctx.model.cfg) or ("" if ctx.precision in fused.PRECISIONS else f"{ctx.precision} (W8A8)")
    if want == "fused" and why:
        ctx.log(f"graph: torch.export (the fused graph does not express {why})")
    return "fused" if want == "fused" and not why else "export"


def build(ctx: BuildContext) -> BackendBuild:
    """The graph (fused or export) at ctx.precision; manifest["ort"]["graph"] says which was built."""
    import logging
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantiser warns through the root logger
    spec = BACKEND.precision(ctx.precision)
    out = Path(ctx.out_dir)
    if graph_kind(ctx) == "fused":
        from . import fused
        tok = ctx.tokenizer_json or (Path(ctx.checkpoint) / "tokenizer.json").read_text()
        snapped = _snap(ctx) if ctx.precision in SNAPPED else None  # before the builder: data errors first
        extra = fused.build(ctx.model, tok, out, ctx.precision, ctx.log)
        if snapped:
            from . import gptq
            weights, record = snapped
            ctx.log(f"writing GPTQ's codes over the builder's for {len(weights)} layer weights")
            extra["gptq"] = dict(record, snapped=gptq.write(out / GRAPH, weights))
        section = {"graph": "fused", "builder_options": fused.builder_options(ctx.precision)}
        return BackendBuild(weight_bytes(out / GRAPH), ("onnx", "onnxruntime", "onnxruntime_genai"), extra,
                            section=section)
    if spec.options:  # the builder's recipe (k-quant, an 8-bit head, ...): our quantiser has none of it
        have = ", ".join(p.name for p in BACKEND.precisions if not p.options)
        raise UserError(f"the torch.export graph cannot make {ctx.precision} (onnxruntime-genai's builder "
                        f"recipe: {' '.join(spec.options)}); it makes: {have}")
    if ctx.precision == "fp32":
        export_onnx(ctx.model, out / GRAPH, ctx.log)
    else:
        work = out / ".fp32"
        work.mkdir()
        export_onnx(ctx.model, work / GRAPH, ctx.log)
        if ctx.precision == "int8":
            ctx.log("quantising to int8 (dynamic, per-channel weights) ...")
            quantize_int8(work / GRAPH, out / GRAPH)
        else:
            ctx.log(f"quantising to {ctx.precision} (weight-only blocks, MatMulNBits) ...")
            quantize_blocks(work / GRAPH, out / GRAPH, spec.bits, spec.block)
        for p in work.iterdir():
            os.remove(p)
        work.rmdir()
    return BackendBuild(weight_bytes(out / GRAPH), ("onnx", "onnxruntime", "onnxscript"),
                        {"graphs": {"decoder": GRAPH}, "entry_points": {
                            "prefill": "decoder.onnx with past length 0",
                            "decode": "decoder.onnx with T = 1"}},
                        section={"graph": "export"})
