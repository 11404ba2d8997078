"""The fused x86 graph: ONNX Runtime's contrib operators, emitted by onnxruntime-genai's model builder.

One graph, `decoder.onnx`, per layer: SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization,
one packed QKV MatMul, GroupQueryAttention (RoPE inside, past and present KV in ONE preallocated
buffer of max_seq_len positions, so a decode step writes its position in place: no concat, no copy),
the SwiGLU MLP with gate and up packed into one MatMul and split after it; MatMulNBits at accuracy
level 4 (activations rounded to int8 per block at run time) for every projection and the LM head at
4 or 8 bits, the embedding a GatherBlockQuantized over the LM head's own blocks (tied weights stored
once). We add one input, `logits_to_keep` (int64 [1]): the LM head runs on the last k positions
only (k = 1 when serving or decoding, T for parity); 0, its default when not fed, keeps every
position (Hugging Face's convention), so onnxruntime-genai, which feeds no such input, runs it.

The artifact is also an onnxruntime-genai model folder: the builder's genai_config.json (its
decoder's file renamed to ours) and tokenizer_config.json beside decoder.onnx and tokenizer.json,
so `onnxruntime_genai.Model(artifact)` generates from it (tests/test_x86_fused.py).

Why the builder: it is the ONNX Runtime team's own exporter for these operators (a well-kept
library), reads our Hugging Face-layout checkpoint as it is, and its graph decodes 2.5-3x faster
than our torch.export graph on the same weights (benchmarks/x86_vs_llamacpp.py). It runs on the
build host only; the device needs onnxruntime and numpy.

    inputs:  input_ids (1, T) int64, attention_mask (1, P+T) int64 (ones), logits_to_keep [1] int64,
             past_key_values.{i}.key/value (1, n_kv_head, S, head_dim) float32, S = max_seq_len
    outputs: logits (1, k, V), present.{i}.key/value (the same buffers as the past, written in place)
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ...config import UserError
from ...files import FULL_TEXT
from . import PRECISIONS as BACKEND_PRECISIONS

GRAPH = "decoder.onnx"
GENAI_CONFIG = "genai_config.json"  # onnxruntime-genai reads the folder through it
# our precision -> (builder precision, block size along K, the row's own builder options), read off
# the backend's table: blocks are the builder's own MatMulNBits; fp32 and int8 (W8A8: our quantiser,
# after) start from its fp32 graph
PRECISIONS = {p.name: (f"int{p.bits}", p.block, p.options) if p.block else ("fp32", 0, ())
              for p in BACKEND_PRECISIONS}
BUILDER = "onnxruntime_genai.models.builder"


def unsupported(cfg) -> str | None:
    """Why the builder cannot express this model (it knows Llama, not our extras), or None."""
    if cfg.gated_attn:
        return "a gated attention output"
    if cfg.head_dim * cfg.n_head != cfg.n_embd:
        return "pruned heads (head_dim * n_head != n_embd)"
    if cfg.share_every > 1:  # the builder would store every layer's copy: sharing's size win lost
        return "layers that share weights"
    return None


def hf_folder(model, tokenizer_json: str, dst: Path) -> Path:
    """The model as a Hugging Face Llama folder (what the builder reads); shared layers expanded."""
    from ...pipeline import checkpoint as ckpt
    return ckpt.save(dst, model, tokenizer_json, {})


def builder_options(precision: str) -> list[str]:
    """The builder's --extra_options for our precision (what the manifest records as
    ort.builder_options): ours for every graph, then the precision row's own."""
    p, block, own = PRECISIONS[precision]
    # gate and up as one MatMul (then a Split): one activation quantisation and one kernel hand-off
    # fewer a layer, +4-5 % decode for minimind-26m at 4 and 8 bits, paired (docs/x86-speed.md)
    opts = ["fuse_mlp_gate_up=true"]
    if p != "fp32":
        opts += ["accuracy_level=4", f"block_size={block}"]
    return opts + list(own)


def run_builder(src: Path, dst: Path, precision: str, log=print):
    """python -m onnxruntime_genai.models.builder, CPU execution provider, into dst."""
    try:
        import onnxruntime_genai  # noqa: F401  (the builder ships inside it)
    except ImportError as e:
        raise UserError("the x86 fused graph needs onnxruntime-genai's model builder on the build host: "
                        "pip install onnxruntime-genai (or build with --set build.graph=export)") from e
    p, block, own = PRECISIONS[precision]
    extra = ["--extra_options", *builder_options(precision)]
    cmd = [sys.executable, "-m", BUILDER, "-i", str(src), "-o", str(dst), "-p", p, "-e", "cpu",
           "-c", str(dst.parent / "hf-cache"), *extra]
    how = ", ".join([p, *([f"blocks of {block}"] if block else []), *own])
    log(f"emitting the fused graph ({how}) with onnxruntime-genai's builder ...")
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
    # not this model's fault: the build's atomic_dir says it
    if any(t in r.stderr + r.stdout for t in FULL_TEXT):
        raise OSError(errno.ENOSPC, "No space left on device (onnxruntime-genai's builder)", str(dst))
    if r.returncode or not (dst / "model.onnx").is_file():
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise UserError(f"onnxruntime-genai's builder failed on this model (exit {r.returncode}): {tail}\n"
                        "build the torch.export graph instead: --set build.graph=export")


def finish(src: Path, dst: Path):
    """The builder's graph -> ours: the tied embedding re-tied to the head, logits_to_keep added."""
    import onnx
    model = onnx.load(str(src))
    tie_head_names(model.graph)
    add_logits_to_keep(model.graph)
    save(model, dst)


def tie_head_names(g):
    """Point the tied embedding's GatherBlockQuantized at the LM head's own blocks.

    With an 8-bit head in a 4-bit graph (matmul_mixed_precision=last_matmul:int8), onnxruntime-genai
    0.18's builder names the embedding's inputs after the RTN/k-quant quantiser (weight_Q8G64,
    weight_scale, weight_zp) while its default quantiser stores the head as weight_Q8, weight_scales,
    weight_zero_points: the graph does not load. Both are the same (N, blocks, bytes) layout, so the
    embedding reads the head's initializers (and its bit width and block); a no-op when they match."""
    from onnx import helper
    gather = next((n for n in g.node if n.op_type == "GatherBlockQuantized"), None)
    if gather is None:
        return
    head = next(n for n in g.node if any(o == "logits" for o in n.output))
    if head.op_type != "MatMulNBits":
        raise RuntimeError(f"the tied embedding is quantised but the LM head is {head.op_type}")
    w, *rest = head.input[1:4]  # B (N, blocks, bytes), scales, zero points (when asymmetric)
    reshape = next(n for n in g.node if n.output[0] == gather.input[0])  # (N, blocks * bytes)
    reshape.input[0] = w
    del gather.input[2:]
    gather.input.extend(x for x in rest if x)
    attrs = {a.name: a for a in head.attribute}
    for a in gather.attribute:
        if a.name in ("bits", "block_size"):
            a.CopyFrom(helper.make_attribute(a.name, attrs[a.name].i))


def add_logits_to_keep(g):
    """Insert Slice(hidden, -k:) before the LM head; k comes from a new int64 [1] input, optional:
    an initializer of the same name is its default (ONNX IR >= 4), 0 = every position."""
    from onnx import TensorProto, helper
    head = next(n for n in g.node if any(o == "logits" for o in n.output))
    hidden = head.input[0]
    g.input.append(helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, [1]))
    g.initializer.extend([helper.make_tensor("logits_to_keep", TensorProto.INT64, [1], [0]),
                          helper.make_tensor("ltk_end", TensorProto.INT64, [1], [2 ** 62]),
                          helper.make_tensor("ltk_axis", TensorProto.INT64, [1], [1])])
    nodes = [helper.make_node("Neg", ["logits_to_keep"], ["ltk_start"], name="/lm_head/keep/Neg"),
             helper.make_node("Slice", [hidden, "ltk_start", "ltk_end", "ltk_axis"], ["lm_head_in"],
                              name="/lm_head/keep/Slice")]
    head.input[0] = "lm_head_in"
    at = list(g.node).index(head)
    for i, n in enumerate(nodes):
        g.node.insert(at + i, n)


def save(model, path: Path):
    """The graph to path and its weights to path.data beside it (what the manifest lists), replacing
    both when they are there: the quantisers rewrite decoder.onnx in place."""
    import onnx
    for f in (path, path.with_name(path.name + ".data")):
        f.unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")


def quantize_gather(path: Path, tmp: Path):
    """8-bit builds: the builder's GatherBlockQuantized is 4-bit only, so it leaves the embedding
    Gather in fp32 (13 MB for minimind-26m); ORT's quantiser makes it uint8 per tensor, as before."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["Gather"])
    model = onnx.load(str(tmp))
    save(model, path)


def quantize_w8a8(src: Path, dst: Path, extra_options: dict | None = None):
    """ORT's dynamic W8A8 of src's MatMuls by constant weights: per-channel int8 weights on 7 bits
    (reduce_range: [-64, 64], pipeline/quant.py's QAT grid), activations uint8 per call
    (DynamicQuantizeLinear). ORT multiplies uint8 by int8; on x86 without VNNI its kernel sums
    each pair of products in 16 bits (vpmaddubsw), which saturates once 255 x |w| x 2 > 32767:
    weights within +-64 never do, so every x86 CPU computes the same answer (the tiny test model
    lost 2.3 % perplexity to 8-bit weights on an AVX2-only AMD EPYC Zen 3; on Zen 4 with VNNI,
    8 and 7 bits were both within 0.05 % of fp32)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(src), str(dst), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], extra_options=extra_options)


def w8a8(path: Path, tmp: Path):
    """int8: the fp32 fused graph's MatMuls made dynamic W8A8 by ORT's quantiser (quantize_w8a8:
    per-channel int8 weights on 7 bits, activations quantised per call; ORT fuses them into
    DynamicQuantizeMatMul, whose int8 GEMM prefills 2-3x faster than MatMulNBits' 8-bit blocks).
    The builder ties the embedding to the LM head as Gather(Transpose(W)), which would keep W in
    fp32 beside its int8 copy: the embedding becomes a column Gather of the LM head's own int8
    matrix times its per-row scales, stored once."""
    import onnx
    from onnx import TensorProto, helper
    quantize_w8a8(path, tmp, {"MatMulConstBOnly": True})
    model = onnx.load(str(tmp))
    g = model.graph
    tr = next(n for n in g.node if n.op_type == "Transpose" and n.input[0].startswith("lm_head"))
    gather = next(n for n in g.node if n.op_type == "Gather" and n.input[0] == tr.output[0])
    w = tr.input[0]  # lm_head.MatMul.weight: (n_embd, vocab) fp32, only the embedding still reads it
    q, scale, zp = (w + "_quantized", w + "_scale", w + "_zero_point")
    zero = next(i for i in g.initializer if i.name == zp)
    if any(onnx.numpy_helper.to_array(zero)):
        raise RuntimeError("ORT's quantiser gave the LM head a non-zero weight zero point")
    emb, ids = gather.output[0], gather.input[1]
    # (C, B, T)
    nodes = [helper.make_node("Gather", [q, ids], ["emb_q"], axis=1, name="/model/embed_tokens/GatherQ"),
             helper.make_node("Transpose", ["emb_q"], ["emb_qt"], perm=[1, 2, 0],
                              name="/model/embed_tokens/TransposeQ"),
             helper.make_node("Cast", ["emb_qt"], ["emb_f"], to=TensorProto.FLOAT,
                              name="/model/embed_tokens/Cast"),
             # (B, T)
             helper.make_node("Gather", [scale, ids], ["emb_s"], axis=0,
                              name="/model/embed_tokens/GatherScale"),
             helper.make_node("Unsqueeze", ["emb_s", "emb_axis"], ["emb_s3"],
                              name="/model/embed_tokens/Unsqueeze"),
             helper.make_node("Mul", ["emb_f", "emb_s3"], [emb], name="/model/embed_tokens/Dequantize")]
    g.initializer.append(helper.make_tensor("emb_axis", TensorProto.INT64, [1], [-1]))
    at = list(g.node).index(tr)
    for n in (tr, gather):
        g.node.remove(n)
    for i, n in enumerate(nodes):
        g.node.insert(at + i, n)
    g.initializer.remove(next(i for i in g.initializer if i.name == w))
    save(model, path)


def genai_folder(builder_out: Path, out: Path) -> dict:
    """Keep the builder's genai_config.json (pointing at our graph) and tokenizer_config.json in out;
    return the config's decoder table."""
    from ...files import write_atomic
    cfg = json.loads((builder_out / "genai_config.json").read_text())
    cfg["model"]["decoder"]["filename"] = GRAPH
    write_atomic(out / GENAI_CONFIG, json.dumps(cfg, indent=4))
    shutil.copyfile(builder_out / "tokenizer_config.json", out / "tokenizer_config.json")
    return cfg["model"]["decoder"]


def build(model, tokenizer_json: str, out: Path, precision: str, log=print) -> dict:
    """Write out/decoder.onnx(+.data); return the manifest fields the runtime needs."""
    work = out / ".builder"
    try:
        src = hf_folder(model, tokenizer_json, work / "hf")
        run_builder(src, work / "onnx", precision, log)
        finish(work / "onnx" / "model.onnx", out / GRAPH)
        if precision == "int8":
            w8a8(out / GRAPH, work / "q.onnx")
        elif PRECISIONS[precision][0] == "int8":
            quantize_gather(out / GRAPH, work / "q.onnx")
        genai = genai_folder(work / "onnx", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"graphs": {"decoder": GRAPH}, "kv_cache": "shared-buffer", "genai_config": GENAI_CONFIG,
            "io": {"inputs": genai["inputs"], "outputs": genai["outputs"],
                   "logits_to_keep": "logits_to_keep"},
            "entry_points": {"prefill": "decoder.onnx, P = 0, logits_to_keep = T (parity) or 1 (serving)",
                             "decode": "decoder.onnx with T = 1, KV written in place at position P"}}
