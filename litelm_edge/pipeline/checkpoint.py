"""Checkpoints: a folder that rebuilds its model with nothing else, loadable by HF transformers.

    ckpt/
      model.safetensors   HF Llama tensor names (shared layers written out per layer)
      config.json         HF LlamaConfig fields + a "litelm" table for what Llama lacks (hf_config.py)
      tokenizer.json      HF tokenizers file
      tokenizer_config.json, generation_config.json   bos/eos/pad for transformers
      training.json       step, losses, corpus hash, sha256 of model.safetensors, model and train config
      optimizer.pt        optional, for --resume

A run folder holds step-numbered checkpoints and a `latest` file naming the newest. Every write
goes to a temporary folder that is renamed into place, so a crash never leaves half a checkpoint
where a good one was; the temporary folders of killed writers are removed by the next write.
A load checks the checkpoint whole before building the model: config.json against the tensor
names and shapes in model.safetensors and against training.json.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from ..config import UserError
from ..files import atomic_dir, sha256_file, write_atomic
from .hf_config import check_tensors, check_training, config_from_hf, hf_config, tensor_shapes

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


def special_tokens(tokenizer_json: str, max_len: int) -> tuple[dict, dict, dict]:
    """(config.json ids, generation_config.json, tokenizer_config.json): bos = eos = pad =
    <|endoftext|>, the document separator, when the tokenizer has it."""
    from .tokenizer import EOT, Tokenizer
    tok = Tokenizer(tokenizer_json)
    eot = tok.eot_id
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len}
    if eot is None:
        return {}, {}, tok_cfg
    ids = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
    return ids, dict(ids), dict(tok_cfg, bos_token=EOT, eos_token=EOT, pad_token=EOT)


def nonfinite(sd: dict) -> str | None:
    """The first tensor of a state dict holding nan or inf (None: every value is finite)."""
    import torch
    return next((k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())),
                None)


def save(path, model, tokenizer_json: str, training: dict, optimizer_state=None, special=None) -> Path:
    """Write a checkpoint folder atomically; weights holding nan or inf are never written.
    special: (config.json ids, generation_config.json, tokenizer_config.json) of an imported
    model; by default <|endoftext|> is bos, eos and pad (special_tokens)."""
    import torch
    from safetensors.torch import save_file
    final = Path(path)
    ids, gen, tok_cfg = special or special_tokens(tokenizer_json, model.cfg.max_seq_len)
    sd = hf_state_dict(model)
    if bad := nonfinite(sd):
        raise UserError(f"not writing checkpoint '{final}': {bad} holds nan or inf (training diverged): "
                        "lower the learning rate or set train.grad_clip, and resume from the last good "
                        "checkpoint")
    with atomic_dir(final) as tmp:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(model.cfg, ids), indent=2))
        (tmp / "tokenizer.json").write_text(tokenizer_json)
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
        if gen:
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        training = dict(training, model_sha256=sha256_file(tmp / "model.safetensors"),
                        n_params=model.num_params(), model_config=dataclasses.asdict(model.cfg))
        (tmp / "training.json").write_text(json.dumps(training, indent=2))
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
    return final


def resolve(path, need_tokenizer: bool = True) -> Path:
    """A checkpoint folder, or a run folder whose `latest` file names one."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        raise UserError(f"'{path}' is a GGUF file: import it once, then use the folder: "
                        f"litelm-edge import {path} --out CHECKPOINT_DIR")
    if (p / "latest").is_file():
        p = p / (p / "latest").read_text().strip()
    if not p.is_dir():
        raise UserError(f"checkpoint '{path}' not found: pass a checkpoint or run folder made by "
                        "`litelm-edge train`")
    for f in ("model.safetensors", "config.json"):
        if not (p / f).is_file():
            raise UserError(f"checkpoint '{p}' is missing {f}: it is not a litelm-edge checkpoint, or is "
                            "damaged")
    if need_tokenizer and not (p / "tokenizer.json").is_file():
        raise UserError(f"checkpoint '{p}' has no tokenizer.json: pass --tokenizer PATH/tokenizer.json")
    return p


def _read_json(p: Path, name: str) -> dict:
    try:
        d = json.loads((p / name).read_text()) if (p / name).is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"checkpoint '{p}': corrupt {name}, not valid JSON ({e}): restore it from a backup "
                        "or the checkpoint's source") from e
    if not isinstance(d, dict):
        raise UserError(f"checkpoint '{p}': {name} must be a JSON object")
    return d


def read_config(p: Path):
    """(ModelConfig, training dict) of checkpoint folder `p`, checked against the weights'
    names and shapes (read from the safetensors header) and against training.json."""
    training = _read_json(p, "training.json")
    cfg = config_from_hf(_read_json(p, "config.json"), f"{p / 'config.json'}")
    check_tensors(tensor_shapes(p / "model.safetensors"), cfg, f"{p / 'config.json'}")
    check_training(cfg, training, f"{p / 'config.json'}")
    return cfg, training


def load(path, device="cpu", tokenizer=None):
    """-> (model in eval mode, tokenizer_json str, training dict). Verifies the weights' sha256;
    tokenizer: a tokenizer.json for a checkpoint folder without one (an HF import)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from .model import Transformer
    p = resolve(path, need_tokenizer=tokenizer is None)  # tokenizer=False: the weights alone (converters)
    cfg, training = read_config(p)
    want = training.get("model_sha256")
    if want and sha256_file(p / "model.safetensors") != want:
        raise UserError(f"checkpoint '{p}': model.safetensors does not match its sha256 (corrupt); "
                        "restore it or re-run train")
    tok_path = Path(tokenizer) if tokenizer else p / "tokenizer.json"
    if tok_path.is_dir():
        tok_path = tok_path / "tokenizer.json"
    if tokenizer is not False and not tok_path.is_file():
        raise UserError(f"tokenizer '{tokenizer}' not found: pass a tokenizer.json")
    tok_json = tok_path.read_text() if tokenizer is not False else None
    if tok_json is not None:
        check_vocab(tok_json, cfg.vocab_size, tok_path, given=bool(tokenizer))
    try:
        sd = load_file(str(p / "model.safetensors"), device=device)
        model = Transformer(cfg)
        load_hf_state_dict(model, sd)
    except (SafetensorError, KeyError, RuntimeError, OSError) as e:
        raise UserError(f"checkpoint '{p}': cannot load model.safetensors ({str(e).splitlines()[0]}); "
                        "restore it from where the checkpoint came from") from e
    if bad := nonfinite(sd):  # no eval of nan, no build of one (an int8 scale of nan)
        raise UserError(f"checkpoint '{p}': {bad} holds nan or inf (a diverged run): use an earlier "
                        "checkpoint of the run, or retrain with a lower learning rate")
    return model.to(device).eval(), tok_json, training


def check_vocab(tokenizer_json: str, n_rows: int, where, given: bool = True):
    """The tokenizer must be the model's: no id past the embedding; and one given apart from the
    weights (--tokenizer, an import) must not cover under half of it: published models pad their
    tables a little (to a multiple of 64 or 128), never by half. A checkpoint's own tokenizer may:
    `train` lets a preset's table be wider than the data's tokenizer."""
    from .tokenizer import Tokenizer
    n = Tokenizer(tokenizer_json).vocab_size
    if n > n_rows or (given and n < n_rows // 2):
        why = (f"ids {n_rows}..{n - 1} have no embedding row" if n > n_rows
               else "it is another model's vocabulary")
        raise UserError(f"tokenizer '{where}' has {n} tokens but the model's embedding has {n_rows} rows ({why}): "
                        "pass the model's own tokenizer.json (--tokenizer), the one it was trained or "
                        "published with")


def update_latest(run_dir: Path, name: str, keep: int = 2):
    """Point run_dir/latest at `name` atomically, then prune older step checkpoints."""
    write_atomic(run_dir / "latest", name + "\n")
    steps = sorted(run_dir.glob("ckpt-*"), key=lambda d: d.name)
    for d in steps[:-keep]:
        if d.name != name:
            shutil.rmtree(d, ignore_errors=True)
