"""Hugging Face Llama checkpoints written by transformers itself load with transformers' logits, in
both config styles; what the model cannot compute is refused in one line; what we export either
loads in transformers with our logits or does not claim to be a Llama."""
import json

import pytest
import torch

from conftest import cli

transformers = pytest.importorskip("transformers")

from litelm_edge.config import UserError  # noqa: E402
from litelm_edge.pipeline import checkpoint as ckpt  # noqa: E402
from litelm_edge.pipeline.model import ModelConfig, Transformer  # noqa: E402

THETA = 5e5  # not the default 1e4, so a loader that drops it gives other logits
TOL = 1e-4


def hf_checkpoint(path, **kw):
    """A tiny random LlamaForCausalLM saved by transformers (its own config.json style)."""
    torch.manual_seed(0)
    c = transformers.LlamaConfig(**dict(dict(vocab_size=512, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4,
                                             num_key_value_heads=2, max_position_embeddings=128,
                                             # logits of size
                                             rope_theta=THETA, initializer_range=0.2), **kw))
    m = transformers.LlamaForCausalLM(c).eval()
    m.save_pretrained(path)
    return m


def max_diff(ours, theirs, idx) -> float:
    with torch.no_grad():
        return float((ours(idx)[0] - theirs(idx).logits).abs().max())


def edit_config(path, **changes):
    d = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    (path / "config.json").write_text(json.dumps(d))


def test_transformers_5_config_with_rope_parameters(tmp_path, data_dir):
    hf = hf_checkpoint(tmp_path / "hf")
    d = json.loads((tmp_path / "hf" / "config.json").read_text())
    if "rope_parameters" not in d:
        pytest.skip(f"transformers {transformers.__version__} writes the 4.x style; the next test covers it")
    assert "rope_theta" not in d  # the style that used to load with the default RoPE base
    model, _, _ = ckpt.load(tmp_path / "hf", tokenizer=data_dir / "tokenizer.json")
    assert model.cfg.rope_theta == THETA
    idx = torch.randint(0, 512, (1, 48))
    diff = max_diff(model, hf, idx)
    print(f"transformers {transformers.__version__}, rope_parameters style: max |logit diff| {diff:.2e}")
    assert diff < TOL
    wrong = Transformer(ModelConfig(**{**model.cfg.__dict__, "rope_theta": 1e4})).eval()
    wrong.load_state_dict(model.state_dict())
    assert max_diff(wrong, hf, idx) > 100 * max(diff, TOL / 10)  # the check can fail: the base matters


def test_transformers_4_config_with_top_level_rope_theta(tmp_path, data_dir):
    hf_checkpoint(tmp_path / "hf", tie_word_embeddings=True)
    edit_config(tmp_path / "hf", rope_parameters=None, rope_theta=THETA)  # how transformers 4.x writes it
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()  # transformers reads it too
    model, _, _ = ckpt.load(tmp_path / "hf", tokenizer=data_dir / "tokenizer.json")
    idx = torch.randint(0, 512, (1, 48))
    diff = max_diff(model, again, idx)
    print(f"transformers {transformers.__version__}, top-level rope_theta style: max |logit diff| {diff:.2e}")
    assert model.cfg.rope_theta == THETA and model.cfg.tie_embeddings and diff < TOL


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": THETA, "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
                          "RoPE type 'llama3'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE type 'linear'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"attention_bias": True}, "attention_bias = true is not supported"),
    ({"model_type": "gemma2"}, "model_type 'gemma2' is not supported (its logit soft-capping"),
    ({"model_type": "qwen2"}, "lacks model.layers.0.self_attn.k_proj.bias"),  # Qwen2 without its biases
    ({"num_hidden_layers": None, "num_hiden_layers": 2},
     "num_hidden_layers is 32 but model.safetensors holds 2"),
    ({"architectures": ["LlamaForSequenceClassification"]},
     "'LlamaForSequenceClassification' is not a causal LM"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4}}, "packed by a quantiser (awq)"),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 32, "max_window_layers": 1},
     "sliding-window attention (32 positions) on layers 1..1 is not implemented"),
])
def test_what_cannot_be_represented_is_refused(tmp_path, data_dir, change, message):
    hf_checkpoint(tmp_path / "hf")
    edit_config(tmp_path / "hf", **change)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = cli("eval", "--checkpoint", tmp_path / "hf", "--tokenizer", data_dir / "tokenizer.json", "--data",
            data_dir, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


QWEN_SHAPE = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=THETA,
                  initializer_range=0.2)


def qwen2_checkpoint(path, **kw):
    """A tiny random Qwen2ForCausalLM saved by transformers, its q/k/v biases non-zero (transformers
    starts them at zero, which a loader that drops them would not notice)."""
    torch.manual_seed(0)
    m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**dict(QWEN_SHAPE, **kw))).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    m.save_pretrained(path)
    return m


@pytest.mark.parametrize("tie", [False, True])
def test_qwen2_loads_with_transformers_logits(tmp_path, data_dir, tie):
    hf = qwen2_checkpoint(tmp_path / "qwen", tie_word_embeddings=tie)
    model, _, _ = ckpt.load(tmp_path / "qwen", tokenizer=data_dir / "tokenizer.json")
    idx = torch.randint(0, 512, (1, 48))
    diff = max_diff(model, hf, idx)
    print(f"Qwen2 (tied {tie}) in transformers {transformers.__version__}: max |logit diff| {diff:.2e}")
    assert model.cfg.attn_bias and model.cfg.tie_embeddings == tie and diff < TOL
    nobias = Transformer(ModelConfig(**{**model.cfg.__dict__, "attn_bias": False})).eval()
    nobias.load_state_dict(model.state_dict(), strict=False)
    assert max_diff(nobias, hf, idx) > 100 * max(diff, TOL / 10)  # the biases matter: the check can fail
    ckpt.save(tmp_path / "ours", model, (data_dir / "tokenizer.json").read_text(), {"step": 0})
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()  # and ours reads back
    assert type(back).__name__ == "Qwen2ForCausalLM" and max_diff(model, back, idx) < TOL


def test_hub_config_keys_that_change_nothing_are_accepted(tmp_path, data_dir):
    """What transformers and the Hub add (SmolLM2's config.json has the last four) loads as it is."""
    hf = hf_checkpoint(tmp_path / "hf")
    edit_config(tmp_path / "hf", _model_name_or_path="HuggingFaceTB/SmolLM2-135M", unk_token_id=0,
                is_llama_config=True, rope_interleaved=False, torch_dtype="bfloat16", pretraining_tp=1)
    model, _, _ = ckpt.load(tmp_path / "hf", tokenizer=data_dir / "tokenizer.json")
    assert max_diff(model, hf, torch.randint(0, 512, (1, 32))) < TOL


def test_our_own_config_keeps_strict_keys(tmp_path, data_dir):
    m = Transformer(ModelConfig(vocab_size=512, n_layer=1, n_embd=32, n_head=2, n_kv_head=1,
                                intermediate_size=64, max_seq_len=64)).eval()
    ckpt.save(tmp_path / "c", m, (data_dir / "tokenizer.json").read_text(), {"step": 0})
    edit_config(tmp_path / "c", rope_thetta=1e4)
    with pytest.raises(UserError, match="unknown key 'rope_thetta'.*did you mean 'rope_theta'"):
        ckpt.load(tmp_path / "c")


@pytest.mark.parametrize("cls", ["LlamaConfig", "Qwen2Config"])
def test_every_field_of_transformers_config_is_read_checked_or_inert(cls):
    """The reading is as complete as transformers' class: a field it gains must be classified here
    (read, checked or inert) before a config.json with it is trusted; the defaults are its own."""
    from litelm_edge.pipeline.hf_config import CHECKED, FAMILIES, HF_FIELDS, INERT
    c = getattr(transformers, cls)()
    fields = set(c.to_dict()) - {"rope_theta"}
    assert fields - set(HF_FIELDS.values()) - CHECKED - INERT == set()
    defaults = dict(FAMILIES[c.model_type][1])
    assert defaults.pop("rope_theta") == c.rope_parameters["rope_theta"]
    assert defaults == {k: getattr(c, k) for k in defaults}


def test_folder_without_tokenizer_needs_tokenizer_option(tmp_path, data_dir):
    hf_checkpoint(tmp_path / "hf")
    r = cli("eval", "--checkpoint", tmp_path / "hf", "--data", data_dir, check=False)
    assert r.returncode == 2 and "has no tokenizer.json: pass --tokenizer" in r.stderr, r.stderr
    r = cli("eval", "--checkpoint", tmp_path / "hf", "--tokenizer", data_dir / "tokenizer.json", "--data",
            data_dir, "--set", "windows=2", "--set", "window_len=16")
    assert "val ppl" in r.stdout


@pytest.mark.parametrize("kw", [{}, {"share_every": 2, "tie_embeddings": False}])
def test_our_export_loads_in_transformers_with_our_logits(tmp_path, data_dir, kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=128,
                      max_seq_len=128, rope_theta=THETA, **kw)
    m = Transformer(cfg).eval()
    ckpt.save(tmp_path / "c", m, (data_dir / "tokenizer.json").read_text(), {"step": 0})
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "c").eval()
    idx = torch.randint(0, 512, (1, 48))
    diff = max_diff(m, hf, idx)
    print(f"our export {kw} in transformers {transformers.__version__}: max |logit diff| {diff:.2e}")
    assert type(hf).__name__ == "LlamaForCausalLM" and diff < TOL
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "c")
    gen = transformers.GenerationConfig.from_pretrained(tmp_path / "c")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    assert gen.eos_token_id == gen.bos_token_id == gen.pad_token_id == eot == hf.config.eos_token_id


def test_gated_attention_does_not_claim_llama(tmp_path, data_dir):
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=512, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                                intermediate_size=128, max_seq_len=128, gated_attn=True)).eval()
    ckpt.save(tmp_path / "c", m, (data_dir / "tokenizer.json").read_text(), {"step": 0})
    d = json.loads((tmp_path / "c" / "config.json").read_text())
    assert d["architectures"] != ["LlamaForCausalLM"] and d["model_type"] != "llama"
    with pytest.raises((ValueError, KeyError, OSError)):  # transformers refuses rather than drop g_proj
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "c")
    back, _, _ = ckpt.load(tmp_path / "c")  # we read it back whole
    idx = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(back(idx)[0], m(idx)[0])


def test_unknown_key_in_litelm_table(tmp_path, data_dir):
    m = Transformer(ModelConfig(vocab_size=512, n_layer=1, n_embd=32, n_head=2, n_kv_head=1,
                                intermediate_size=64, max_seq_len=64)).eval()
    ckpt.save(tmp_path / "c", m, (data_dir / "tokenizer.json").read_text(), {"step": 0})
    d = json.loads((tmp_path / "c" / "config.json").read_text())
    d["litelm"]["gated_atn"] = True
    (tmp_path / "c" / "config.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="unknown key 'gated_atn'.*did you mean 'gated_attn'"):
        ckpt.load(tmp_path / "c")
