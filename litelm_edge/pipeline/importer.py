"""import: a model as it is published -> a litelm-edge checkpoint folder (checkpoint.py's layout).

    litelm-edge import SmolLM2-135M-Instruct.Q4_1.gguf --out smollm2/
    litelm-edge import ./Qwen2.5-0.5B-Instruct/ --out qwen/      (a folder transformers or the Hub wrote)

Transformers reads the source, as it documents: `from_pretrained(dir, gguf_file=...)` dequantises a
GGUF's weights (gguf-py's numpy kernels), undoes llama.cpp's q/k row permutation and builds a fast
tokenizer from the GGUF's vocabulary and merges; a folder may hold sharded or bf16 safetensors.
The weights become fp32 in our model, its config.json is written by hf_config, and the checkpoint
is loaded back and checked whole before `import` returns. What is refused is refused before any
weight is read: an architecture or a tensor type outside what this reads (`GGUF_ARCHS`,
`gguf_types`), a config.json that changes the computation (hf_config), a tokenizer that is not the
model's (checkpoint.check_vocab).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import UserError
from ..files import sha256_file

GGUF_ARCHS = {"llama": "SmolLM2, TinyLlama, MiniMind's Llama form", "qwen2": "Qwen2, Qwen2.5"}


def gguf_types() -> set[str]:
    """Tensor types gguf-py dequantises (F32/F16 and the quantised ones it has kernels for)."""
    from gguf.quants import _type_traits  # gguf-py's registry of dequantisers, by GGMLQuantizationType
    return {"F32", "F16"} | {t.name for t in _type_traits}


def gguf_header(path: Path) -> tuple[str, dict[str, int]]:
    """(general.architecture, {tensor type name: count}) from the header; no tensor is read."""
    try:
        from gguf import GGUFReader
    except ImportError as e:
        raise UserError("reading a GGUF file needs the gguf package: pip install 'litelm-edge[import]'") from e
    try:
        r = GGUFReader(str(path))
        f = r.fields["general.architecture"]
        arch = bytes(f.parts[f.data[0]]).decode()
    except (KeyError, ValueError, IndexError, OSError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                        "pass the .gguf file as published") from e
    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return arch, types


def check_gguf(path: Path) -> tuple[str, dict[str, int]]:
    """The architecture and tensor types, or one line naming what is not supported and what is."""
    arch, types = gguf_header(path)
    if arch not in GGUF_ARCHS:
        have = "; ".join(f"{a} ({m})" for a, m in GGUF_ARCHS.items())
        raise UserError(f"{path}: GGUF architecture '{arch}' is not supported; supported: {have}")
    ok = gguf_types()
    bad = sorted(set(types) - ok)
    if bad:
        raise UserError(f"{path}: GGUF tensor type {', '.join(bad)} cannot be dequantised by gguf-py "
                        f"{_version(GGUF_PY)}; supported: {', '.join(sorted(ok))}: re-quantise with "
                        "llama-quantize (Q8_0, Q4_K_M, ...) or upgrade gguf")
    return arch, types


GGUF_SUFFIX = ".gguf"
GGUF_PY = GGUF_SUFFIX[1:]  # gguf-py's PyPI distribution is named like the file format, not the target


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "(not installed)"


def _check_folder(src: Path):
    """An HF folder's config.json is read (and refused) before transformers loads any weight."""
    from .hf_config import config_from_hf
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"'{src}' has no config.json: pass a .gguf file or a folder transformers saved")
    try:
        d = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_path}: not valid JSON ({e})") from e
    config_from_hf(d, str(cfg_path))
    if not (src / "tokenizer.json").is_file():
        raise UserError(f"'{src}' has no tokenizer.json (a fast tokenizer): save it with the model "
                        "(tokenizer.save_pretrained) and retry")


def load_source(src: Path):
    """(transformers model in fp32, its fast tokenizer) from a .gguf file or an HF folder."""
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    kw = {"gguf_file": src.name} if src.is_file() else {}
    where = src.parent if src.is_file() else src
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
        tok = transformers.AutoTokenizer.from_pretrained(where, **kw)
    except (OSError, ValueError, KeyError, ImportError, NotImplementedError) as e:
        raise UserError(f"transformers {transformers.__version__} cannot read '{src}': "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return model.eval(), tok


def special_of(hf_model, tok, max_len: int) -> tuple[dict, dict, dict]:
    """bos/eos/pad as the source names them, for config.json, generation_config.json and
    tokenizer_config.json (checkpoint.save's `special`)."""
    cfg, gen = hf_model.config, getattr(hf_model, "generation_config", None)
    ids = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(gen, name, None) if gen is not None else None
        v = v if v is not None else getattr(cfg, name, None)
        v = v if v is not None else getattr(tok, name, None)
        if v is not None:
            ids[name] = v
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        v = getattr(tok, name, None)
        if v:
            tok_cfg[name] = str(v)
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str):
        tok_cfg["chat_template"] = template
    return ids, dict(ids), tok_cfg


def to_checkpoint(hf_model, tok, out: Path, training: dict) -> Path:
    """transformers model + fast tokenizer -> our checkpoint folder (fp32), checked on load."""
    from . import checkpoint as ckpt
    from .hf_config import config_from_hf
    from .model import Transformer
    d = hf_model.config.to_dict()
    d.pop("quantization_config", None)  # a GGUF's: transformers dequantised the weights already
    cfg = config_from_hf(d, f"the config transformers read ({d.get('model_type')})")
    tok_json = tok.backend_tokenizer.to_str()
    ckpt.check_vocab(tok_json, cfg.vocab_size, "the source's tokenizer")
    model = Transformer(cfg).eval()
    sd = {k: v.detach().float() for k, v in hf_model.state_dict().items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    ckpt.load_hf_state_dict(model, sd)
    ckpt.save(out, model, tok_json, training, special=special_of(hf_model, tok, cfg.max_seq_len))
    return Path(out)


def import_model(src, out, log=print) -> dict:
    """A .gguf file or an HF folder -> checkpoint folder `out`; returns what was done."""
    from . import checkpoint as ckpt
    src, out = Path(src), Path(out)
    if not src.exists():
        raise UserError(f"'{src}' not found: pass a .gguf file or a Hugging Face model folder")
    if src.is_file() and src.suffix.lower() != GGUF_SUFFIX:
        raise UserError(f"'{src}' is neither a .gguf file nor a folder: pass a GGUF file or a model folder")
    t0 = time.time()
    source = {"imported_from": str(src.resolve())}
    if src.is_file():
        arch, types = check_gguf(src)
        source.update(format=GGUF_PY, architecture=arch, tensor_types=types, source_sha256=sha256_file(src))
    else:
        _check_folder(src)
        source.update(format="hf")
    log(f"reading {src.name} with transformers (dequantising to fp32) ...")
    hf_model, tok = load_source(src)
    source.update(transformers=_version("transformers"), gguf=_version(GGUF_PY) if src.is_file() else None)
    to_checkpoint(hf_model, tok, out, {"source": source})
    model, _, _ = ckpt.load(out)  # the folder checks itself whole, as every later verb will
    return {"checkpoint": str(out), "n_params": model.num_params(), "seconds": round(time.time() - t0, 1),
            "model_type": "qwen2" if model.cfg.attn_bias else "llama", **source}
