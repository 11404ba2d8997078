"""The gguf target: a model.gguf that llama.cpp itself loads and runs as torch does (llama-simple's
greedy text), that tokenizes as we do, and whose quantised types are llama.cpp's own."""
import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf target writes with llama.cpp's gguf package: "
                                          "pip install 'litelm-edge[gguf]'")
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python runs the GGUF: tools/setup-llamacpp.sh")

from litelm_edge.backends.gguf import build as gbuild  # noqa: E402
from litelm_edge.config import UserError  # noqa: E402
from litelm_edge.pipeline import checkpoint as ckpt  # noqa: E402
from litelm_edge.pipeline.generate import generate_artifact  # noqa: E402
from litelm_edge.pipeline.tokenizer import Tokenizer  # noqa: E402

PROMPT = "First Citizen:\nBefore we proceed"
N = 24
# what a GPT-2 split has to get right: contractions, digits, runs of spaces and newlines, accents,
# symbols, a special token in the text
TRICKY = "It's 2024: don't   stop!\n\n\tnaïve café — ROMEO's 3.14 ... <|endoftext|>KING:\n  \n"


def _llamacpp():
    spec = importlib.util.spec_from_file_location(
        "_llamacpp", Path(__file__).parents[1] / "benchmarks" / "_llamacpp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def f32(build_once, tiny_run, data_dir):
    return build_once(tiny_run, "gguf", "fp32", data_dir)


def manifest(a):
    return json.loads((a / "manifest.json").read_text())


def test_f32_gguf_passes_the_fp32_gate(f32):
    m = manifest(f32)
    assert m["runtime"] == "llama.cpp" and m["gguf"]["tensor_type"] == "F32" and "model.gguf" in m["files"]
    assert m["parity"]["ok"] and m["parity"]["max_abs_err"] <= 1e-3
    r = gguf.GGUFReader(str(f32 / "model.gguf"))
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("tokenizer.ggml.pre") == "gpt-2"
    assert field("llama.block_count") == m["model"]["n_layer"]
    assert field("tokenizer.ggml.add_bos_token") is False
    assert {t.tensor_type.name for t in r.tensors} == {"F32"} and set(m["weight_bytes"]) == {"float32"}


def test_llama_cpp_greedy_text_equals_torch(f32, tiny_run):
    """llama.cpp's own llama-simple (greedy, its default f16 KV cache) on the f32 GGUF prints what
    torch's greedy tokens decode to: the prompt, then N tokens or up to an end-of-generation token
    (llama.cpp stops on <|endoftext|> and <|im_end|> without printing them)."""
    import torch
    # the build tools/setup-llamacpp.sh makes
    simple = _llamacpp().ensure_built(print, "no-amx", ("llama-simple",))["simple"]
    r = subprocess.run([str(simple), "-m", str(f32 / "model.gguf"), "-n", str(N), PROMPT],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    model, tok_json, _ = ckpt.load(tiny_run)
    tok = Tokenizer(tok_json)
    ids = tok.encode(PROMPT)
    new = model.generate(torch.tensor([ids]), N)[0, len(ids):].tolist()
    eog = {tok.eot_id, tok.tok.token_to_id("<|im_end|>")}
    new = new[:next((i for i, t in enumerate(new) if t in eog), N)]
    assert r.stdout.removesuffix("\n") == tok.decode(ids + new) and len(tok.decode(ids + new)) > len(PROMPT)


def test_runtime_greedy_tokens_equal_torch(f32, tiny_run):
    import torch
    model, tok_json, _ = ckpt.load(tiny_run)
    ids = Tokenizer(tok_json).encode(PROMPT)
    want = model.generate(torch.tensor([ids]), N)[0].tolist()
    assert generate_artifact(f32, ids, N, 0.0, None, 0, eot=-1) == want


def test_llama_cpp_tokenizes_as_we_do(f32, data_dir):
    tok = Tokenizer.load(f32 / "tokenizer.json")
    val = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r")
    texts = [TRICKY, tok.decode(val[:400]), tok.decode(val[-400:])]
    llm = llama_cpp.Llama(str(f32 / "model.gguf"), vocab_only=True, verbose=False)
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text), text[:60]
        assert llm.detokenize(tok.encode(text), special=True).decode() == text


@pytest.mark.parametrize("precision,qtype,low", [("q8_0", "Q8_0", "int8"), ("q4_0", "Q4_0", "int4")])
def test_quantised_types_are_llama_cpps(build_once, tiny_run, data_dir, f32, precision, qtype, low):
    art = build_once(tiny_run, "gguf", precision, data_dir)
    m = manifest(art)
    assert m["precision"] == precision and m["parity"]["ok"] and m["gguf"]["tensor_type"] == qtype
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(art / "model.gguf")).tensors}
    assert types["token_embd.weight"] == qtype and types["blk.0.attn_q.weight"] == qtype
    assert types["output_norm.weight"] == "F32"  # norms stay F32, as llama.cpp keeps them
    w = m["weight_bytes"]
    # a block: 32 values (32 or 16 bytes), a 2-byte f16 scale
    assert w[low] == (16 if low == "int8" else 8) * w["float16"]
    assert m["files"]["model.gguf"]["size"] < 0.4 * manifest(f32)["files"]["model.gguf"]["size"]


def test_tokenizers_llama_cpp_cannot_split_as_we_do_are_refused(tiny_run):
    _, tok_json, _ = ckpt.load(tiny_run)
    tj = json.loads(tok_json)
    tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}
    with pytest.raises(UserError, match="byte-level BPE pre-tokenizers .*Metaspace"):
        gbuild.vocab(json.dumps(tj), 512)
    tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}
    with pytest.raises(UserError, match="add_prefix_space"):
        gbuild.vocab(json.dumps(tj), 512)


def test_settings_land_under_the_section(tiny_run, data_dir, tmp_path):
    """Issue 25's settings test for the fourth backend: a target TOML's [gguf] value (flash_attn)
    and a --set one (kv_type) both reach manifest["gguf"], where the runtime reads them."""
    from litelm_edge.config import data_dir as shipped
    from litelm_edge.flows.build import build
    target = tmp_path / "gguf-fa.toml"
    target.write_text((shipped("targets") / "gguf.toml").read_text().replace("flash_attn = false",
                                                                              "flash_attn = true"))
    m = build(tiny_run, str(target), tmp_path / "a", "q8_0", data_dir, sets={"gguf.kv_type": "f16"},
              log=lambda s: None)
    assert (m["gguf"]["flash_attn"], m["gguf"]["kv_type"]) == (True, "f16") and m["parity"]["ok"]
    assert manifest(tmp_path / "a")["gguf"] == m["gguf"]
