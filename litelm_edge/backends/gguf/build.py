"""GGUF backend, build side: a checkpoint -> model.gguf, written by llama.cpp's `gguf` package (PyPI).

We write the file ourselves rather than run llama.cpp's convert_hf_to_gguf.py: that script
identifies a BPE pre-tokenizer by hashing what it does to a test string, and refuses a tokenizer
it has not seen (ours, trained per corpus), unless patched. Our tokenizer's structure says which
pre-tokenizer it is, so we name it (PRE_TOKENIZERS) and the rest is the converter's own recipe for
a Llama, from the same library:

    general.architecture = "llama"; llama.* hyper-parameters (head_count_kv, rope.freq_base, ...)
    tokenizer.ggml.model "gpt2", .pre "gpt-2", tokens (byte-level strings), token_type, merges
    tensors: gguf's TensorNameMap (HF name -> token_embd, blk.N.attn_q, ...); attn_q and attn_k rows
             permuted as LlamaModel.permute does (llama.cpp's "llama" rotates adjacent pairs, HF
             Llama rotates halves); F32, or Q8_0 / Q4_0 by gguf.quants (llama.cpp's own rounding)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...config import UserError
from .. import BackendBuild, BuildContext

GGUF_FILE = "model.gguf"
QTYPE = {"fp32": "F32", "q8_0": "Q8_0", "q4_0": "Q4_0"}  # our precision -> GGMLQuantizationType
FILE_TYPE = {"fp32": "ALL_F32", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}  # -> LlamaFileType
# a quantised block: its values (dtype, bytes) and one f16 scale (2 bytes), for weight_bytes
BLOCK_PARTS = {"Q8_0": ("int8", 32), "Q4_0": ("int4", 16)}


def unsupported(cfg) -> str | None:
    """What llama.cpp's "llama" architecture cannot express, or None."""
    if cfg.gated_attn:
        return "a gated attention output (llama.cpp's llama has no such gate)"
    return None


def _byte_level(p: dict | None) -> bool:
    return bool(p) and p.get("type") == "ByteLevel" and p.get("use_regex", True) \
        and not p.get("add_prefix_space")


def pre_tokenizer(tj: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (llama-vocab.cpp), from its structure.

    ByteLevel with its regex, no prefix space, is GPT-2's split: llama.cpp's "gpt-2" runs the same
    regex ('s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+).
    Digits (one by one) before it is SmolLM's: llama.cpp's "smollm" splits every digit first."""
    pt = tj.get("pre_tokenizer")
    if _byte_level(pt):
        return "gpt-2"
    seq = (pt or {}).get("pretokenizers") or []
    if [p.get("type") for p in seq] == ["Digits", "ByteLevel"] and seq[0].get("individual_digits") \
            and _byte_level(seq[1]):
        return "smollm"
    raise UserError("the GGUF build knows byte-level BPE pre-tokenizers (GPT-2's, SmolLM's), "
                    f"not {json.dumps(pt)[:120]}: "
                    "build for another target, or use llama.cpp's convert_hf_to_gguf.py on the checkpoint")


def vocab(tokenizer_json: str, n_vocab: int) -> dict:
    """tokens, token types, merges and llama.cpp's pre-tokenizer name, padded to the model's vocab."""
    import gguf
    tj = json.loads(tokenizer_json)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or tj.get("normalizer") \
            or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError("the GGUF build writes byte-level BPE tokenizers (model BPE, ByteLevel decoder, no "
                        "normalizer); this tokenizer.json is another kind: build for another target")
    pre = pre_tokenizer(tj)
    ids = dict(model["vocab"])
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    ids.update({t["content"]: i for i, t in added.items()})
    text = {i: s for s, i in ids.items()}
    if max(text) >= n_vocab:
        raise UserError(f"the tokenizer has ids up to {max(text)} but the model only {n_vocab} embeddings")
    tokens, types = [], []
    for i in range(n_vocab):  # ids the tokenizer never gives: llama.cpp's converter writes [PAD<i>], UNUSED
        tokens.append(text.get(i, f"[PAD{i}]"))
        kind = "UNUSED" if i not in text else "NORMAL" if i not in added else \
            "CONTROL" if added[i].get("special") else "USER_DEFINED"
        types.append(getattr(gguf.TokenType, kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half rows -> llama.cpp's adjacent pairs (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(model, qtype_name: str):
    """(GGUF name, array, GGMLQuantizationType) of every weight, HF names mapped by gguf's table."""
    import gguf

    from ...pipeline.checkpoint import hf_state_dict
    c = model.cfg
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.n_layer)
    qtype = gguf.GGMLQuantizationType[qtype_name]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    for hf, t in hf_state_dict(model).items():
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"the GGUF build has no llama.cpp name for the tensor {hf}")
        w = t.float().numpy()
        if hf.endswith(("q_proj.weight", "q_proj.bias")):
            w = permute(w, c.n_head)
        elif hf.endswith(("k_proj.weight", "k_proj.bias")):
            w = permute(w, c.n_kv_head)
        # norms and biases stay F32, as llama.cpp keeps them
        if w.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            yield name, np.ascontiguousarray(w, np.float32), gguf.GGMLQuantizationType.F32
            continue
        if w.shape[-1] % block:
            raise UserError(f"{hf} has rows of {w.shape[-1]}, not a multiple of {qtype_name}'s block "
                            f"of {block}: "
                            "build --precision fp32")
        yield name, gguf.quants.quantize(w, qtype), qtype


def write(model, tokenizer_json: str, path: Path, precision: str, log=print) -> dict:
    """model.gguf at path; returns the metadata the manifest records."""
    import gguf

    from ...pipeline.tokenizer import Tokenizer
    c = model.cfg
    v = vocab(tokenizer_json, c.vocab_size)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name("litelm-edge model")
    w.add_file_type(gguf.LlamaFileType[FILE_TYPE[precision]])
    w.add_vocab_size(c.vocab_size)
    w.add_context_length(c.max_seq_len)
    w.add_embedding_length(c.n_embd)
    w.add_block_count(c.n_layer)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.n_head)
    w.add_head_count_kv(c.n_kv_head)
    w.add_key_length(c.head_dim)  # a pruned model's head_dim is not n_embd / n_head
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(v["pre"])
    w.add_token_list(v["tokens"])
    w.add_token_types(v["types"])
    w.add_token_merges(v["merges"])
    eot = Tokenizer(tokenizer_json).eot_id
    if eot is not None:  # our documents end (and begin) with <|endoftext|>: llama.cpp stops on it
        w.add_bos_token_id(eot)
        w.add_eos_token_id(eot)
    w.add_add_bos_token(False)  # we never prepend one: prompts are tokenized as we do
    log(f"writing {path.name} ({QTYPE[precision]}) with gguf {gguf_version()} ...")
    for name, arr, qtype in tensors(model, QTYPE[precision]):
        w.add_tensor(name, arr, raw_dtype=None if qtype == gguf.GGMLQuantizationType.F32 else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"file": GGUF_FILE, "arch": "llama", "tensor_type": QTYPE[precision],
            "file_type": FILE_TYPE[precision],
            "tokenizer": {"model": "gpt2", "pre": v["pre"], "add_bos": False, "eos": eot}}


def gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("gguf")
    except PackageNotFoundError:
        return "unknown"


def weight_bytes(path: Path) -> dict:
    """{dtype: bytes} read back from the file: a quantised block's values as int8 / int4, its f16 scale
    as float16 (Q8_0: 32 + 2 bytes a block of 32; Q4_0: 16 + 2)."""
    import gguf
    out: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        kind = t.tensor_type.name
        if kind in BLOCK_PARTS:
            dtype, nbytes = BLOCK_PARTS[kind]
            blocks = int(t.n_elements) // gguf.GGML_QUANT_SIZES[t.tensor_type][0]
            out[dtype] = out.get(dtype, 0) + blocks * nbytes
            out["float16"] = out.get("float16", 0) + blocks * 2
        else:
            name = {"F32": "float32", "F16": "float16"}.get(kind, kind.lower())
            out[name] = out.get(name, 0) + int(t.n_bytes)
    return out


def build(ctx: BuildContext) -> BackendBuild:
    why = unsupported(ctx.model.cfg)
    if why:
        raise UserError(f"the gguf target cannot express {why}: build for another target")
    tok = ctx.tokenizer_json or (Path(ctx.checkpoint) / "tokenizer.json").read_text()
    meta = write(ctx.model, tok, Path(ctx.out_dir) / GGUF_FILE, ctx.precision, ctx.log)
    meta["gguf_package"] = gguf_version()  # beside the settings (kv_type, flash_attn: read by runtime.py)
    # tools: llama_cpp (gguf has no __version__: meta["gguf_package"] has it)
    return BackendBuild(weight_bytes(Path(ctx.out_dir) / GGUF_FILE), ("llama_cpp",),
                        {"graphs": {"model": GGUF_FILE}, "entry_points": {
                            "prefill": "llama_decode of the prompt (logits of every position)",
                            "decode": "llama_decode of one token at position P"}}, section=meta)
