"""Qwen2 (q/k/v biases) on every target: a tiny random Qwen2ForCausalLM saved by transformers, its
biases drawn large so an artifact that dropped them would be far off, builds for each backend
whose toolchain is here and passes the fp32 parity rule against torch (which equals transformers:
tests/test_hf_import.py)."""
import json
import shutil

import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from conftest import toolchain_or_skip  # noqa: E402
from test_hf_import import qwen2_checkpoint  # noqa: E402

LITERT_SETS = {"prefill_len": 16, "capacity": 128, "windows": "32", "prefill_windows": "32"}  # as test_litert


@pytest.fixture(scope="module")
def qwen(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("qwen2") / "hf"
    qwen2_checkpoint(path, tie_word_embeddings=True)
    shutil.copy(data_dir / "tokenizer.json", path / "tokenizer.json")
    return path


def check(m, precision="fp32"):
    p = m["parity"]
    print(f"{m['target']}/{precision} ({m.get('graph', m['backend'])}): max abs {p['max_abs_err']:.2e}, "
          f"top-1 {p['top1_agreement']:.3f}")
    assert p["ok"] and p["top1_agreement"] == 1.0 and m["model"]["vocab_size"] == 512


@pytest.mark.parametrize("graph", ["fused", "export"])
def test_x86(qwen, data_dir, build_once, graph):
    pytest.importorskip("onnxruntime")
    if graph == "fused":
        pytest.importorskip("onnxruntime_genai",
                            reason="the fused x86 graph is emitted by onnxruntime-genai's builder")
    art = build_once(qwen, "x86", "fp32", data_dir, {"graph": graph})
    check(json.loads((art / "manifest.json").read_text()))


def test_tvm(qwen, data_dir, build_once, tvm_python):
    art = build_once(qwen, "x86-tvm", "fp32", data_dir)
    check(json.loads((art / "manifest.json").read_text()))


def test_litert(qwen, data_dir, build_once):
    pytest.importorskip("ai_edge_litert")
    from litelm_edge.backends.litert import build as litert_build
    toolchain_or_skip(litert_build.python, "LiteRT")
    art = build_once(qwen, "x86-litert", "fp32", data_dir, LITERT_SETS)
    check(json.loads((art / "manifest.json").read_text()))
