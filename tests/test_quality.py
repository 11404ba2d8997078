"""The build's quality gate: llama.cpp's perplexity-tool figures (ppl ratio, mean KL, top-1) and
the rule each precision's row holds. No build here: a torch model against a stand-in runtime."""
import math

import numpy as np
import pytest
import torch

from litelm_edge import backends
from litelm_edge.backends import FP32_MAX_ABS, INT4, INT8
from litelm_edge.flows import build as build_flow
from litelm_edge.pipeline.eval import divergence_summary, nll, token_divergence, torch_logits
from litelm_edge.pipeline.model import ModelConfig, Transformer


def test_figures_match_their_definitions():
    """Hand-computed on two tokens of a 3-word vocabulary (perplexity.cpp's log_softmax())."""
    ref = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    got = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    t = np.array([0, 1])
    d = token_divergence(ref, got, t)
    p = np.exp(ref) / np.exp(ref).sum(-1, keepdims=True)
    q = np.exp(got) / np.exp(got).sum(-1, keepdims=True)
    assert np.allclose(d["kl"], (p * np.log(p / q)).sum(-1))
    s = divergence_summary([d])
    assert s["ppl_ratio"] == pytest.approx(math.exp((nll(got, t) - nll(ref, t)) / 2))
    assert s["ppl"] == pytest.approx(math.exp(nll(got, t) / 2)) and s["top1_agreement"] == 0.5
    same = divergence_summary([token_divergence(ref, ref, t)])
    assert (same["ppl_ratio"], same["mean_kl"], same["top1_agreement"], same["ppl_ratio_se"]) == (1.0, 0.0, 1.0, 0.0)


class Runtime:
    """A stand-in artifact runtime: torch's logits, changed by `damage` (a decode step's by
    `decode_damage`, the same unless given)."""

    def __init__(self, model, damage, decode_damage=None):
        self.model, self.damage, self.decode_damage = model, damage, decode_damage or damage
        self.ids: list = []

    def prefill(self, ids):
        self.ids = list(ids)
        return self.damage(torch_logits(self.model, np.array(self.ids))).astype(np.float32)

    def decode(self, token):
        self.ids.append(token)
        return self.decode_damage(torch_logits(self.model, np.array(self.ids))[-1:])[0].astype(np.float32)


@pytest.fixture(scope="module")
def model_and_windows():
    """A random 2-layer model with a peaked next-token distribution (a trained model's, roughly) and
    8 windows of 33 tokens sampled from it: text the model predicts, as held-out text is for a real one."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=128,
                      max_seq_len=64)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(6.0)  # logits' std ~1, top logit ~8
    g, wins = torch.Generator().manual_seed(0), []
    for i in range(8):
        ids = [i]
        for _ in range(32):
            z = torch.from_numpy(torch_logits(m, np.array(ids))[-1])
            ids.append(int(torch.multinomial(torch.softmax(z, -1), 1, generator=g)))
        wins.append(np.array(ids, np.int64))
    return m, wins


def _precision(quality):
    return backends.Precision("q", 8, None, quality, 0.25)


def test_a_faithful_artifact_passes_and_a_damaged_one_fails(model_and_windows):
    model, wins = model_and_windows
    rng = np.random.default_rng(1)
    good = build_flow.parity(model, Runtime(model, lambda z: z + rng.normal(0, 0.01, z.shape)), wins,
                             _precision(INT8))
    assert good["ok"] and good["ppl_ratio"] == pytest.approx(1.0, abs=0.01) and good["mean_kl"] < 1e-3
    assert good["windows"] == 8 and good["window_len"] == 32 and good["ppl_torch"] > 1
    # damaged: noise of std 1 on every logit: top-1 unchanged (the distribution is peaked), yet
    # perplexity +21 % and mean KL 0.17 nats: over the 8-bit bar, under the 4-bit one
    noisy = lambda z: z + np.random.default_rng(2).normal(0, 1.0, z.shape)  # noqa: E731
    bad = build_flow.parity(model, Runtime(model, noisy), wins, _precision(INT8))
    assert bad["top1_agreement"] == 1.0 and not bad["ok"] and bad["rule"] == str(INT8)
    assert bad["mean_kl"] > INT8.max_mean_kl and bad["ppl_ratio"] > INT8.max_ppl_ratio + 3 * bad["ppl_ratio_se"]
    assert build_flow.parity(model, Runtime(model, noisy), wins, _precision(INT4))["ok"]
    assert "ppl ratio" in build_flow.describe(bad) and "mean KL" in build_flow.describe(bad)
    # flattened: x10 ppl
    flat = build_flow.parity(model, Runtime(model, lambda z: z / 3), wins, _precision(INT4))
    assert not flat["ok"] and flat["ppl_ratio"] > 5 and flat["top1_agreement"] == 1.0
    # the same damage at fp32: judged by max abs, which it fails too
    assert not build_flow.parity(model, Runtime(model, noisy), wins, backends.FP32)["ok"]
    exact = build_flow.parity(model, Runtime(model, lambda z: z), wins, backends.FP32)
    assert exact["ok"] and exact["max_abs_err"] <= FP32_MAX_ABS and exact["rule"] == "max_abs_err <= 0.001"


def test_the_decode_path_is_judged_too(model_and_windows):
    """Each window's second half decoded a step at a time is scored on its own ("decode"): a runtime
    whose one-token path alone is damaged (say int8 activations gone wrong) fails the gate although
    its prefill figures are perfect."""
    model, wins = model_and_windows
    noisy = lambda z: z + np.random.default_rng(2).normal(0, 1.0, z.shape)  # noqa: E731
    p = build_flow.parity(model, Runtime(model, lambda z: z, noisy), wins, _precision(INT8))
    assert p["ppl_ratio"] == pytest.approx(1.0, abs=1e-5) and p["mean_kl"] < 1e-6
    assert p["decode"]["mean_kl"] > INT8.max_mean_kl and not p["ok"]
    assert "decoded" in build_flow.describe(p)
    same = build_flow.parity(model, Runtime(model, lambda z: z), wins, _precision(INT8))
    assert same["ok"] and same["decode"]["mean_kl"] < 1e-6 and same["decode"]["max_abs_err"] < 1e-4


def test_either_figure_over_its_bar_fails():
    p = _precision(INT8)
    base = {"ppl_ratio": 1.0, "mean_kl": 0.0, "max_abs_err": 5.0}
    assert p.passes(base)  # max abs is fp32's rule only
    assert not p.passes(dict(base, ppl_ratio=INT8.max_ppl_ratio + 1e-6))
    assert not p.passes(dict(base, mean_kl=INT8.max_mean_kl + 1e-6))


def test_every_quantised_precision_has_the_rule_of_its_bits():
    """8-bit rows hold the 8-bit bar, 4-bit rows INT4's (at or under llama.cpp q4_0's cost), fp32 max abs;
    the docs table prints each rule."""
    assert INT8.max_ppl_ratio <= 1.03 and INT4.max_ppl_ratio <= 1.30 and INT8.max_mean_kl < INT4.max_mean_kl
    table = backends.precisions_markdown()
    for b in backends.names():
        for p in backends.load(b).precisions:
            want = {32: None, 8: INT8, 4: INT4}[p.bits]
            assert p.quality == want, (b, p.name)
            assert f"| {b} | `{p.name}` | {p.bits} |" in table and p.rule in table


def test_reports_show_the_build_gate_and_a_gate_off_build_fails_its_verdict():
    from litelm_edge.reports import judge, report
    p = {"windows": 16, "window_len": 128, "ppl_ratio": 1.35, "ppl_ratio_se": 0.03, "mean_kl": 0.4,
         "top1_agreement": 0.58, "rule": str(INT4), "ok": False, "how": "measured on this build host"}
    (name, figures, how), = report.quality_rows({"manifest": {"parity": p}})
    assert "ppl ratio" in name and figures.startswith("1.3500 ± 0.0300 / 0.4000 / 0.580")
    assert "16 x 128" in how and str(INT4) in how and how.endswith("FAILED")
    # older artifact
    assert report.quality_rows({"manifest": {"parity": {"ok": True, "top1_agreement": 1.0}}}) == []
    assert judge.overall(True and p["ok"], []) == "fail"
