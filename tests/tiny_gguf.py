"""Tiny GGUF files written the way llama.cpp's convert_hf_to_gguf.py writes them (gguf-py's writer,
its tensor names, Llama's q/k row permutation, a byte-level BPE vocabulary as "gpt2"), from a
transformers model and one of the tests' tokenizer.json files: seconds, no download."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: HF's rotate-half rows -> GGML's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer(w, tokenizer_json: str):
    d = json.loads(tokenizer_json)
    vocab = dict(d["model"]["vocab"])
    special = {t["content"]: t["id"] for t in d["added_tokens"]}
    vocab.update(special)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in d["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control
    w.add_token_merges(merges)
    eot = special.get("<|endoftext|>", 0)
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)


def write(path: Path, hf_model, tokenizer_json: str, qtype: str = "F32") -> Path:
    """hf_model: a LlamaForCausalLM or Qwen2ForCausalLM; qtype: F32 or a type gguf-py quantises
    (Q8_0, ...), for the 2-D weights (norms and biases stay F32, as llama.cpp keeps them)."""
    import gguf
    c = hf_model.config
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[c.model_type]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name("tiny")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    _tokenizer(w, tokenizer_json)
    names = gguf.get_tensor_name_map(arch, c.num_hidden_layers)
    q = gguf.GGMLQuantizationType[qtype]
    for hf_name, t in hf_model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        x = t.detach().float().numpy()
        if arch == gguf.MODEL_ARCH.LLAMA and base.endswith("q_proj"):
            x = _permute(x, c.num_attention_heads)
        elif arch == gguf.MODEL_ARCH.LLAMA and base.endswith("k_proj"):
            x = _permute(x, c.num_key_value_heads)
        name = names.get_name(base) + "." + suffix
        if x.ndim == 2 and q != gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, gguf.quants.quantize(x, q), raw_dtype=q)
        else:
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_header_only(path: Path, arch: str, qtype: str = "F32") -> Path:
    """A GGUF of architecture `arch` holding one (4, 256) tensor of type `qtype`: what the import
    refuses from the header alone."""
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    t = gguf.GGMLQuantizationType[qtype]
    block, nbytes = gguf.GGML_QUANT_SIZES[t]
    w.add_tensor("token_embd.weight", np.zeros((4, 256 // block * nbytes), np.uint8), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
