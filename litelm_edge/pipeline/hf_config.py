"""A checkpoint's config.json (HF Llama / Qwen2 fields) <-> ModelConfig, and config vs weights, checked whole.

Two kinds of config.json. Ours (it carries a `litelm` table): every key is known, unknown keys are
errors. Transformers' and the Hub's (no `litelm` table): read as transformers reads it, family by
family (`FAMILIES`): the fields the family's model code computes with are read, with transformers'
own defaults where missing; the rest (`_name_or_path`, `unk_token_id`, `is_llama_config`,
`rope_interleaved`, `torch_dtype`, ...) the model code never reads, and neither do we. What changes
the computation and is not implemented here is refused in one line: RoPE scaling, activations
other than SiLU, o_proj / MLP biases, sliding-window attention that a sequence can reach, packed
quantised weights, other model types. Both RoPE styles: transformers 4.x writes `rope_theta` at the
top level, 5.x `rope_parameters = {rope_type, rope_theta}`.
"""
from __future__ import annotations

from pathlib import Path

from ..config import UserError, from_dict, unknown_key

HF_FIELDS = {  # ModelConfig field -> HF LlamaConfig / Qwen2Config field
    "vocab_size": "vocab_size", "n_layer": "num_hidden_layers", "n_embd": "hidden_size",
    "n_head": "num_attention_heads", "n_kv_head": "num_key_value_heads",
    "intermediate_size": "intermediate_size", "max_seq_len": "max_position_embeddings",
    "rope_theta": "rope_theta", "norm_eps": "rms_norm_eps", "tie_embeddings": "tie_word_embeddings",
}
LITELM_FIELDS = ("gated_attn", "share_every", "dropout", "head_size")
FAMILIES = {  # model_type -> (q/k/v biases, transformers' config defaults of the fields read)
    "llama": (False, {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                      "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 2048,
                      "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False}),
    "qwen2": (True, {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "max_position_embeddings": 32768,
                     "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False}),
}
OURS = "litelm-edge"  # model_type of a model transformers has no class for (gated attention)
CHECKED = {"model_type", "architectures", "hidden_act", "rope_parameters", "rope_scaling", "attention_bias",
           "mlp_bias", "head_dim", "litelm", "use_sliding_window", "sliding_window", "max_window_layers",
           "layer_types", "quantization_config"}
INERT = {  # keys transformers writes that change nothing the model computes (ours are checked against these)
    "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id", "dtype", "torch_dtype",
    "initializer_range", "pretraining_tp", "transformers_version", "use_cache", "_name_or_path",
    "output_attentions", "output_hidden_states", "return_dict", "chunk_size_feed_forward",
    "is_encoder_decoder", "id2label", "label2id", "problem_type", "tokenizer_class"}
WHY_NOT = {  # families transformers has that the model here does not compute, and the reason
    "mistral": "its sliding-window attention is not implemented here",
    "qwen3": "its per-head q/k RMSNorm is not implemented here",
    "gemma": "its GeGLU MLP and scaled embeddings are not implemented here",
    "gemma2": "its logit soft-capping, sandwich norms and sliding windows are not implemented here",
    "phi3": "its fused qkv / gate_up weights and LongRoPE are not implemented here",
    "mixtral": "mixture-of-experts MLPs are not implemented here",
    "qwen2_moe": "mixture-of-experts MLPs are not implemented here",
    "gpt2": "learned positions, LayerNorm and GELU are not implemented here",
}
SUPPORTED = "llama (SmolLM2, TinyLlama, MiniMind's Llama form), qwen2 (Qwen2, Qwen2.5)"


def _rope_theta(d: dict, default: float, where: str) -> float:
    """The RoPE base from either config style; RoPE scaling of any kind is refused."""
    rope = d.get("rope_parameters") or {}
    for table in (rope, d.get("rope_scaling") or {}):
        kind = table.get("rope_type", table.get("type", "default"))
        if kind != "default":
            raise UserError(f"{where}: RoPE type '{kind}' (rope scaling) is not implemented: litelm-edge "
                            "computes plain RoPE only; use a checkpoint without rope_scaling")
    theta = [t for t in (d.get("rope_theta"), rope.get("rope_theta")) if t is not None]
    if len(theta) == 2 and float(theta[0]) != float(theta[1]):
        raise UserError(f"{where}: rope_theta {theta[0]} and rope_parameters.rope_theta {theta[1]} disagree: "
                        "keep one")
    return float(theta[0]) if theta else default


def _sliding_layers(d: dict) -> list[int]:
    """Layers whose attention a sliding window limits, as transformers' Qwen2Config decides it."""
    window = d.get("sliding_window") if d.get("use_sliding_window") or d.get("layer_types") else None
    if not window or window >= d.get("max_position_embeddings", 32768):
        return []  # no window, or one no sequence the model takes can outgrow
    n = d.get("num_hidden_layers", 32)
    types = d.get("layer_types") or ["sliding_attention" if i >= d.get("max_window_layers", 28) else "full_attention"
                                     for i in range(n)]
    return [i for i, t in enumerate(types) if t == "sliding_attention"]


def _refuse_unsupported(d: dict, where: str):
    mt = d.get("model_type", "llama")
    if mt not in FAMILIES and mt != OURS:
        why = WHY_NOT.get(mt, "not a family this toolkit computes")
        raise UserError(f"{where}: model_type '{mt}' is not supported ({why}); supported: {SUPPORTED}")
    heads = [a for a in d.get("architectures") or [] if not str(a).endswith("ForCausalLM")]
    if heads:
        raise UserError(f"{where}: architecture '{heads[0]}' is not a causal LM: litelm-edge builds "
                        "*ForCausalLM models (a language-model head)")
    if d.get("hidden_act", "silu") != "silu":
        raise UserError(f"{where}: hidden_act '{d['hidden_act']}' is not supported: the MLP is SwiGLU (silu) "
                        "only")
    for key in ("attention_bias", "mlp_bias"):  # Llama's attention_bias puts one on o_proj too
        if d.get(key):
            raise UserError(f"{where}: {key} = true is not supported: only Qwen2's q/k/v biases are "
                            "implemented (model_type qwen2)")
    if d.get("quantization_config"):
        kind = (d["quantization_config"] or {}).get("quant_method", "?")
        raise UserError(f"{where}: the weights are packed by a quantiser ({kind}): litelm-edge reads float "
                        "weights; use the unquantised checkpoint (or its GGUF: litelm-edge import)")
    sliding = _sliding_layers(d)
    if sliding:
        raise UserError(f"{where}: sliding-window attention ({d['sliding_window']} positions) on layers "
                        f"{sliding[0]}..{sliding[-1]} is not implemented: set max_position_embeddings to "
                        f"{d['sliding_window']} or less, or use_sliding_window false if the model was "
                        "trained so")
    if "litelm" in d:  # ours: every key is known
        for k in d:
            if k not in HF_FIELDS.values() and k not in CHECKED and k not in INERT:
                raise unknown_key(k, [*HF_FIELDS.values(), *CHECKED], where)


def config_from_hf(d: dict, where: str = "config.json"):
    """config.json (ours or transformers', either RoPE style) -> a validated ModelConfig."""
    from .model import ModelConfig
    if not isinstance(d, dict):
        raise UserError(f"{where} must be a JSON object")
    _refuse_unsupported(d, where)
    bias, defaults = FAMILIES.get(d.get("model_type", "llama"), FAMILIES["llama"])
    hf = dict(defaults, **{k: v for k, v in d.items() if v is not None})
    hf["rope_theta"] = _rope_theta(d, defaults["rope_theta"], where)
    hf.setdefault("num_key_value_heads", hf["num_attention_heads"])
    kw = {ours: hf[name] for ours, name in HF_FIELDS.items()}
    head_dim = d.get("head_dim")
    if head_dim and head_dim != hf["hidden_size"] // hf["num_attention_heads"]:
        kw["head_size"] = head_dim  # pruned heads, or a model whose heads are not C / n_head wide
    litelm = d.get("litelm") or {}
    if not isinstance(litelm, dict):
        raise UserError(f"{where}: 'litelm' must be a table")
    kw.update({k: v for k, v in litelm.items()})
    kw["attn_bias"] = bias
    return from_dict(ModelConfig, kw, where)


def hf_config(cfg, special: dict | None = None) -> dict:
    """config.json for `cfg`: LlamaConfig fields (both RoPE styles), Qwen2Config's for a model with
    q/k/v biases, or, for what neither can represent (gated attention), our own model_type so
    transformers refuses it instead of loading it without the gate."""
    d = {hf: getattr(cfg, ours) for ours, hf in HF_FIELDS.items()}
    family = OURS if cfg.gated_attn else "qwen2" if cfg.attn_bias else "llama"
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", OURS: "LitelmEdgeForCausalLM"}[family]
    d.update(architectures=[arch], model_type=family, hidden_act="silu", head_dim=cfg.head_dim,
             rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})
    if family == "qwen2":  # Qwen2Config has no bias switches: q/k/v always, o_proj never
        d.update(use_sliding_window=False, sliding_window=None)
    else:
        d.update(attention_bias=False, mlp_bias=False)
    d.update(torch_dtype="float32", **(special or {}), litelm={k: getattr(cfg, k) for k in LITELM_FIELDS})
    return d


def expected_tensors(cfg) -> dict[str, tuple]:
    """HF tensor name -> shape that a model of `cfg` stores (shared blocks written per layer)."""
    C, hd, I, V = cfg.n_embd, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size
    out = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = (V, C)
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                    p + "self_attn.q_proj.weight": (cfg.n_head * hd, C),
                    p + "self_attn.k_proj.weight": (cfg.n_kv_head * hd, C),
                    p + "self_attn.v_proj.weight": (cfg.n_kv_head * hd, C),
                    p + "self_attn.o_proj.weight": (C, cfg.n_head * hd), p + "mlp.gate_proj.weight": (I, C),
                    p + "mlp.up_proj.weight": (I, C), p + "mlp.down_proj.weight": (C, I)})
        if cfg.gated_attn:
            out[p + "self_attn.g_proj.weight"] = (cfg.n_head * hd, C)
        if cfg.attn_bias:  # Qwen2
            out.update({p + "self_attn.q_proj.bias": (cfg.n_head * hd,),
                        p + "self_attn.k_proj.bias": (cfg.n_kv_head * hd,),
                        p + "self_attn.v_proj.bias": (cfg.n_kv_head * hd,)})
    return out


def tensor_shapes(path) -> dict[str, tuple]:
    """Names and shapes from model.safetensors' header: nothing is loaded."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), "np") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise UserError(f"checkpoint '{Path(path).parent}': model.safetensors is not a readable safetensors file "
                        f"({str(e).splitlines()[0]}): restore it from where the checkpoint came from") from e


# which config.json field a tensor's shape depends on, per tensor kind
_FIELD_OF = {"embed_tokens": "vocab_size / hidden_size", "lm_head": "vocab_size / hidden_size",
             "norm": "hidden_size", "layernorm": "hidden_size", "q_proj": "num_attention_heads / head_dim",
             "o_proj": "num_attention_heads / head_dim", "k_proj": "num_key_value_heads / head_dim",
             "v_proj": "num_key_value_heads / head_dim", "g_proj": "num_attention_heads / head_dim",
             "_proj": "intermediate_size"}
ADVICE = "config.json does not describe these weights: restore the config.json saved with them"


def check_tensors(shapes: dict, cfg, where: str):
    """config.json against the tensors: a mismatch names the field (exit 2), never a smaller model."""
    want = expected_tensors(cfg)
    have_layers = {int(k.split(".")[2]) for k in shapes if k.startswith("model.layers.")}
    if have_layers and max(have_layers) + 1 != cfg.n_layer:
        raise UserError(f"{where}: num_hidden_layers is {cfg.n_layer} but model.safetensors holds "
                        f"{max(have_layers) + 1} layers: {ADVICE}")
    bias = sorted(k for k in shapes if k.endswith(".bias"))
    if bias and not cfg.attn_bias:
        raise UserError(f"{where}: model.safetensors holds biases ({bias[0]}), which a model_type "
                        f"'llama' does not carry: {ADVICE} (q/k/v biases: model_type qwen2)")
    gate = any(".g_proj." in k for k in shapes)
    if gate != cfg.gated_attn:
        raise UserError(f"{where}: litelm.gated_attn is {str(cfg.gated_attn).lower()} but model.safetensors "
                        f"{'holds' if gate else 'has no'} g_proj weights: {ADVICE}")
    missing = sorted(set(want) - set(shapes))
    if missing:
        extra = "; or set tie_word_embeddings = true" if missing == ["lm_head.weight"] else ""
        raise UserError(f"{where}: model.safetensors lacks {missing[0]}"
                        f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: {ADVICE}{extra}")
    for name, shape in want.items():
        if shapes[name] != shape:
            kind = next(k for k in _FIELD_OF if k in name)
            raise UserError(f"{where}: {name} is {list(shapes[name])} in model.safetensors but config.json "
                            f"({_FIELD_OF[kind]}) implies {list(shape)}: {ADVICE}")
    unused = sorted(set(shapes) - set(want) - {"lm_head.weight"})
    if unused:
        raise UserError(f"{where}: model.safetensors holds {unused[0]}, which config.json has no place for: "
                        f"{ADVICE}")


def check_training(cfg, training: dict, where: str):
    """config.json against what training.json recorded of the model (field by field)."""
    from dataclasses import asdict
    rec = training.get("model_config")
    if not isinstance(rec, dict):
        return  # an imported or older checkpoint: the tensors are the check
    for k, v in asdict(cfg).items():
        if k in rec and rec[k] != v:
            raise UserError(f"{where}: config.json gives {k} = {v!r} but training.json recorded {rec[k]!r} "
                            "for these weights: restore the config.json saved with them")
