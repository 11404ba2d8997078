"""Checkpoints: a folder that rebuilds its model with nothing else, loadable by HF transformers.

    ckpt/
      model.safetensors   HF Llama tensor names (shared layers written out per layer)
      config.json         HF LlamaConfig fields + a "litelm" table for what Llama lacks
      tokenizer.json      HF tokenizers file
      training.json       step, losses, corpus hash, sha256 of model.safetensors
      optimizer.pt        optional, for --resume

A run folder holds step-numbered checkpoints and a `latest` file naming the newest. Every write
goes to a temporary folder that is renamed into place, so a crash never leaves half a checkpoint
where a good one was.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import UserError
from .files import atomic_dir, sha256_file, write_atomic

_HF_FIELDS = {  # ModelConfig field -> HF LlamaConfig field
    "vocab_size": "vocab_size", "n_layer": "num_hidden_layers", "n_embd": "hidden_size",
    "n_head": "num_attention_heads", "n_kv_head": "num_key_value_heads",
    "intermediate_size": "intermediate_size", "max_seq_len": "max_position_embeddings",
    "rope_theta": "rope_theta", "norm_eps": "rms_norm_eps", "tie_embeddings": "tie_word_embeddings",
}
_LITELM_FIELDS = ("gated_attn", "share_every", "dropout", "head_size")


def hf_config(cfg) -> dict:
    d = {hf: getattr(cfg, ours) for ours, hf in _HF_FIELDS.items()}
    d.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
             head_dim=cfg.head_dim, attention_bias=False, mlp_bias=False, torch_dtype="float32",
             litelm={k: getattr(cfg, k) for k in _LITELM_FIELDS})
    return d


def config_from_hf(d: dict):
    from .model import ModelConfig
    kw = {ours: d[hf] for ours, hf in _HF_FIELDS.items() if hf in d}
    kw.update(d.get("litelm", {}))
    return ModelConfig(**kw).validate()


def hf_state_dict(model) -> dict:
    """Our state dict under HF Llama names, shared blocks expanded to one copy per layer."""
    sd = model.state_dict()
    out = {"model.embed_tokens.weight": sd["embed_tokens.weight"], "model.norm.weight": sd["norm.weight"]}
    if not model.cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i, li in enumerate(model.layer_order()):
        pre = f"layers.{li}."
        for k, v in sd.items():
            if k.startswith(pre):
                out[f"model.layers.{i}.{k[len(pre):]}"] = v.clone() if i != li else v
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def load_hf_state_dict(model, sd: dict):
    ours = {"embed_tokens.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    if "lm_head.weight" in sd and not model.cfg.tie_embeddings:
        ours["lm_head.weight"] = sd["lm_head.weight"]
    for i, li in enumerate(model.layer_order()):
        if i % model.cfg.share_every:  # later users of a shared block hold copies
            continue
        pre = f"model.layers.{i}."
        ours.update({f"layers.{li}.{k[len(pre):]}": v for k, v in sd.items() if k.startswith(pre)})
    if model.cfg.tie_embeddings:
        ours["lm_head.weight"] = ours["embed_tokens.weight"]
    model.load_state_dict(ours, strict=True)


def save(path, model, tokenizer_json: str, training: dict, optimizer_state=None) -> Path:
    import torch
    from safetensors.torch import save_file
    final = Path(path)
    with atomic_dir(final) as tmp:
        save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(model.cfg), indent=2))
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        training = dict(training, model_sha256=sha256_file(tmp / "model.safetensors"),
                        n_params=model.num_params())
        (tmp / "training.json").write_text(json.dumps(training, indent=2))
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
    return final


def resolve(path) -> Path:
    """A checkpoint folder, or a run folder whose `latest` file names one."""
    p = Path(path)
    if (p / "latest").is_file():
        p = p / (p / "latest").read_text().strip()
    if not p.is_dir():
        raise UserError(f"checkpoint '{path}' not found: pass a checkpoint or run folder made by `litelm-edge train`")
    for f in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (p / f).is_file():
            raise UserError(f"checkpoint '{p}' is missing {f}: it is not a litelm-edge checkpoint, or is damaged")
    return p


def load(path, device="cpu"):
    """-> (model in eval mode, tokenizer_json str, training dict). Verifies the weights' sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from .model import Transformer
    p = resolve(path)
    try:
        cfg = config_from_hf(json.loads((p / "config.json").read_text()))
        training = json.loads((p / "training.json").read_text()) if (p / "training.json").is_file() else {}
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"checkpoint '{p}': corrupt config.json/training.json ({e}); re-run train") from e
    want = training.get("model_sha256")
    if want and sha256_file(p / "model.safetensors") != want:
        raise UserError(f"checkpoint '{p}': model.safetensors does not match its sha256 (corrupt); "
                        "restore it or re-run train")
    try:
        sd = load_file(str(p / "model.safetensors"), device=device)
        model = Transformer(cfg)
        load_hf_state_dict(model, sd)
    except (SafetensorError, KeyError, RuntimeError, OSError) as e:
        raise UserError(f"checkpoint '{p}': cannot load model.safetensors ({str(e).splitlines()[0]}); "
                        "re-run train") from e
    return model.to(device).eval(), (p / "tokenizer.json").read_text(), training


def update_latest(run_dir: Path, name: str, keep: int = 2):
    """Point run_dir/latest at `name` atomically, then prune older step checkpoints."""
    write_atomic(run_dir / "latest", name + "\n")
    steps = sorted(run_dir.glob("ckpt-*"), key=lambda d: d.name)
    for d in steps[:-keep]:
        if d.name != name:
            shutil.rmtree(d, ignore_errors=True)

