"""`litelm-edge import`: a GGUF file or a Hugging Face folder becomes a checkpoint whose logits are
transformers' on the same file; what it cannot read is one line naming it and what is supported;
a tokenizer that is not the model's is refused before anything is built."""
import json

import pytest
import torch

from conftest import cli

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

import tiny_gguf  # noqa: E402
from litelm_edge.pipeline import checkpoint as ckpt  # noqa: E402
from test_hf_import import hf_checkpoint, qwen2_checkpoint  # noqa: E402

TOL = 1e-4


def transformers_gguf(path):
    """What transformers itself makes of the file: the reference the import must equal."""
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                             dtype=torch.float32).eval()


def logits_diff(ours, theirs, n_vocab: int) -> float:
    idx = torch.randint(0, n_vocab, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((ours(idx)[0] - theirs(idx).logits).abs().max())


@pytest.mark.parametrize("family, qtype", [("llama", "Q8_0"), ("qwen2", "Q8_0"), ("qwen2", "F32")])
def test_gguf_imports_with_transformers_logits(tmp_path, data_dir, family, qtype):
    make = hf_checkpoint if family == "llama" else qwen2_checkpoint
    src = make(tmp_path / "hf", tie_word_embeddings=family == "llama")
    f = tiny_gguf.write(tmp_path / "m.gguf", src, (data_dir / "tokenizer.json").read_text(), qtype)
    r = cli("import", f, "--out", tmp_path / "ck")
    assert f"{family}, 0.1M parameters" in r.stdout
    model, tok_json, training = ckpt.load(tmp_path / "ck")
    diff = logits_diff(model, transformers_gguf(f), 512)
    print(f"tiny {family} {qtype} GGUF: max |logit diff| vs transformers {diff:.2e}")
    assert diff < TOL and model.cfg.attn_bias == (family == "qwen2")
    assert training["source"]["format"] == "gguf" and training["source"]["tensor_types"][qtype] > 0
    text = "KING:\nThe king speaks, fair and foul.<|endoftext|>"
    # the GGUF's vocabulary and merges, rebuilt into the tokenizer it came from
    from tokenizers import Tokenizer
    want = Tokenizer.from_file(str(data_dir / "tokenizer.json")).encode(text).ids
    assert Tokenizer.from_str(tok_json).encode(text).ids == want
    if qtype == "F32":  # dequantised nothing: the weights are the source's
        with torch.no_grad():
            assert logits_diff(model, src, 512) < TOL


def test_hf_folder_imports_as_fp32_checkpoint(tmp_path, data_dir):
    src = qwen2_checkpoint(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text((data_dir / "tokenizer.json").read_text())
    cli("import", tmp_path / "hf", "--out", tmp_path / "ck")
    model, _, _ = ckpt.load(tmp_path / "ck")
    assert logits_diff(model, src, 512) < TOL
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model_type"] == "qwen2"


def one_line(r, *fragments):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("arch, qtype, fragments", [
    ("gemma2", "F32",
     ("GGUF architecture 'gemma2' is not supported", "supported: llama (SmolLM2", "qwen2 (")),
    ("llama", "Q8_K",
     ("GGUF tensor type Q8_K cannot be dequantised", "Q4_1", "re-quantise with llama-quantize")),
])
def test_unsupported_gguf_is_one_line(tmp_path, arch, qtype, fragments):
    f = tiny_gguf.write_header_only(tmp_path / "x.gguf", arch, qtype)
    one_line(cli("import", f, "--out", tmp_path / "ck", check=False), *fragments)
    assert not (tmp_path / "ck").exists()


def test_a_gguf_given_as_checkpoint_names_the_import(tmp_path, data_dir):
    f = tiny_gguf.write_header_only(tmp_path / "m.gguf", "llama")
    r = cli("eval", "--checkpoint", f, "--data", data_dir, check=False)
    one_line(r, "is a GGUF file: import it once", f"litelm-edge import {f} --out")


def test_not_a_model_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    one_line(cli("import", tmp_path / "notes.txt", "--out", tmp_path / "ck", check=False),
             "neither a .gguf file")
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    one_line(cli("import", tmp_path / "bad.gguf", "--out", tmp_path / "ck", check=False),
             "not a readable GGUF file")
    one_line(cli("import", tmp_path, "--out", tmp_path / "ck", check=False), "has no config.json")


def test_a_tokenizer_of_another_vocabulary_is_refused_before_the_build(tmp_path, tiny_run, data_dir):
    """The model's embedding has 512 rows: a tokenizer with ids past them, or one covering under
    half of them, is not its tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    big = Tokenizer(models.WordLevel({f"w{i}": i for i in range(600)}, unk_token="w0"))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    small = Tokenizer(models.WordLevel({f"w{i}": i for i in range(100)}, unk_token="w0"))
    for name, tok, why in (("big", big, "ids 512..599 have no embedding row"),
                           ("small", small, "it is another model's vocabulary")):
        path = tmp_path / f"{name}.json"
        path.write_text(tok.to_str())
        hf_checkpoint(tmp_path / "hf")  # a folder without a tokenizer: --tokenizer is how one is given
        r = cli("build", "--target", "x86", "--checkpoint", tmp_path / "hf", "--tokenizer", path, "--data",
                data_dir, "--out", tmp_path / "art", check=False)
        one_line(r, f"has {600 if name == 'big' else 100} tokens but the model's embedding has 512 rows", why,
                 "pass the model's own tokenizer.json")
        assert "parity" not in r.stdout and not (tmp_path / "art").exists()
