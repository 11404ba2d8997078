"""Compression: each method does what it says, and its output is a normal checkpoint that builds."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FT, TINY_SETS, TINY_TRAIN, cli, recipe_toml
from litelm_edge.config import UserError
from litelm_edge.pipeline import checkpoint as ckpt
from litelm_edge.pipeline import distill, prune, quant, share
from litelm_edge.pipeline.compress import compress

quiet = dict(log=lambda m: None)


def test_fake_quant_is_straight_through():
    w = torch.randn(6, 10, requires_grad=True)
    q = quant.fake_quant_weight(w, 127)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # STE: identity gradient
    s = quant.weight_scale(w, 127)
    assert torch.allclose(q / s, (q / s).round(), atol=1e-4) and (q / s).abs().max() <= 127 + 1e-4


def test_qat_weights_lie_on_the_grid(qat_run, tiny_run):
    r = qat_run  # conftest's session `compress qat` of tiny_run
    model = ckpt.load(r["checkpoint"])[0]
    assert r["grid_error"] < 1e-3 and quant.grid_error(model) < 1e-3
    assert quant.grid_error(ckpt.load(tiny_run)[0]) > 0.4  # a plain model is off the grid
    assert json.loads((Path(r["checkpoint"]) / "training.json").read_text())["compression"]["method"] == "qat"


def _int8_weights(onnx_path):
    """Dequantised MatMulInteger weights (K, N) of an ORT int8 graph."""
    import onnx
    from onnx import numpy_helper
    g = onnx.load(str(onnx_path))
    init = {i.name: numpy_helper.to_array(i, base_dir=str(onnx_path.parent)) for i in g.graph.initializer}
    out = []
    for n in g.graph.node:
        if n.op_type == "MatMulInteger" and n.input[1] in init:
            w = init[n.input[1]].astype(np.float32)
            out.append((n.input[1], w))
    return init, out


def test_qat_export_is_lossless_in_ort(qat_run, build_once, data_dir):
    """ORT's int8 (the fused W8A8 graph) of a QAT checkpoint lands on QAT's grids: every dequantised
    MatMulInteger weight equals the torch weights (q, k, v packed side by side, gate and up too), and
    the lm_head's int8 matrix, which the embedding gathers from, equals the snapped embedding."""
    pytest.importorskip("onnxruntime")
    art = build_once(qat_run["checkpoint"], "x86", "int8", data_dir)
    assert json.loads((art / "manifest.json").read_text())["ort"]["graph"] == "fused"
    model = ckpt.load(qat_run["checkpoint"])[0]
    torch_w = [m.weight.detach().numpy().T for m in quant.quantised_linears(model)]
    for blk in model.layers:  # the builder packs q, k, v into one MatMul, and gate, up into another;
        a, f = blk.self_attn, blk.mlp  # per-column grids are the same
        torch_w.append(np.concatenate([m.weight.detach().numpy().T for m in (a.q_proj, a.k_proj, a.v_proj)],
                                      1))
        torch_w.append(np.concatenate([m.weight.detach().numpy().T for m in (f.gate_proj, f.up_proj)], 1))
    emb = model.embed_tokens.weight.detach().numpy()
    torch_w.append(emb.T)  # the tied lm_head
    init, ws = _int8_weights(art / "decoder.onnx")
    matched = 0
    for name, w in ws:
        deq = w * init[name.replace("_quantized", "_scale")]
        matched += any(t.shape == deq.shape and np.abs(t - deq).max() < 1e-6 for t in torch_w)
    assert len(ws) == 4 * model.cfg.n_layer + 1 and matched == len(ws)  # qkv o gate+up down, lm_head
    assert not any(v.dtype == np.float32 and v.shape in (emb.shape, emb.T.shape) for v in init.values())


def test_activation_fake_quant_is_orts_dynamic_quantize_linear():
    """tensor_u8 rounds a sequence exactly as ORT's DynamicQuantizeLinear -> DequantizeLinear does."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    g = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "dq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
    sess = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    x = torch.randn(2, 16, 24) * torch.tensor([3.0, 0.2])[:, None, None] + 0.7  # two sequences, two ranges
    ours = quant.fake_quant_act(x, "tensor_u8")
    for b in range(2):  # one ORT call per sequence
        theirs = sess.run(None, {"x": x[b].numpy()})[0]
        step = float(x[b].max().clamp_min(0) - x[b].min().clamp_max(0)) / 255
        assert np.abs(ours[b].numpy() - theirs).max() < 1e-3 * step
    assert not torch.equal(ours, x)


def test_qat_config_rejects_unknown_scheme(tiny_run, data_dir, tmp_path):
    with pytest.raises(UserError, match="act=int4: use one of tensor_u8, token, none"):
        compress("qat", tiny_run, data_dir, tmp_path / "q", dict(FT, act="int4"), **quiet)


def test_magnitude_pruning_keeps_sparsity_through_finetune(tiny_run, data_dir, tmp_path):
    r = compress("prune", tiny_run, data_dir, tmp_path / "p", dict(FT, sparsity=0.5), **quiet)
    model = ckpt.load(r["checkpoint"])[0]
    assert prune.sparsity(model) == pytest.approx(0.5, abs=0.01) and r["params_after"] == r["params_before"]
    t = json.loads((ckpt.resolve(tmp_path / "p") / "training.json").read_text())
    assert t["sparsity"] == pytest.approx(0.5, abs=0.01) and "does not make dense runtimes faster" in t["compression"]["note"]
    assert r["note"].startswith("50% of the weights are zero: unstructured sparsity does not make dense "
                                "runtimes")


def test_threshold_and_per_layer_pruning(tiny_run):
    model = ckpt.load(tiny_run)[0]
    masks = prune.magnitude_masks(model, prune.PruneConfig(threshold=0.01))
    prune.apply_masks(model, masks)
    for w in prune.prunable(model).values():
        assert not ((w.abs() < 0.01) & (w != 0)).any()
    model = ckpt.load(tiny_run)[0]
    prune.apply_masks(model, prune.magnitude_masks(model, prune.PruneConfig(sparsity=0.3, scope="layer")))
    for w in prune.prunable(model).values():
        assert float((w == 0).float().mean()) == pytest.approx(0.3, abs=0.02)


def test_structured_pruning_shrinks_model_and_artifact(tiny_run, data_dir, tmp_path, x86_fp32):
    from litelm_edge.flows.build import build
    r = compress("prune", tiny_run, data_dir, tmp_path / "s", dict(FT, ffn=0.5, heads=0.5, layers=1), **quiet)
    model = ckpt.load(r["checkpoint"])[0]
    c = model.cfg
    assert (c.n_layer, c.n_head, c.n_kv_head, c.intermediate_size, c.head_dim) == (1, 2, 2, 64, 16)
    assert r["params_after"] < 0.8 * r["params_before"]
    small = build(r["checkpoint"], "x86", tmp_path / "a", "fp32", data_dir, **quiet)
    big = json.loads((x86_fp32 / "manifest.json").read_text())
    assert small["size_bytes"] < 0.85 * big["size_bytes"] and small["parity"]["max_abs_err"] < 1e-4


def test_distillation_loss_is_ce_when_alpha_is_zero():
    s, t, y = torch.randn(2, 5, 7), torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    ce = torch.nn.functional.cross_entropy(s.view(-1, 7), y.view(-1))
    assert torch.allclose(distill.kd_loss(s, t, y, 0.0, 2.0), ce)
    assert torch.allclose(distill.kd_loss(s, s, y, 0.5, 2.0), 0.5 * ce, atol=1e-6)  # KL(p || p) = 0


def _kl_to(teacher, student, data_dir) -> float:
    """Mean per-token KL(teacher || student) on held-out windows."""
    from litelm_edge.pipeline.eval import EvalConfig, val_windows
    kl = []
    for w in val_windows(data_dir, EvalConfig(windows=8, window_len=64), max_seq_len=64):
        x = torch.as_tensor(w[:-1], dtype=torch.long)[None]
        with torch.no_grad():
            t, s = teacher(x)[0].log_softmax(-1), student(x)[0].log_softmax(-1)
        kl.append(float(torch.nn.functional.kl_div(s[0], t[0], log_target=True, reduction="batchmean")))
    return sum(kl) / len(kl)


def test_distilled_student_is_closer_to_the_teacher(tiny_run, data_dir, tmp_path):
    """The distilled student's KL to the teacher is below both its own initialisation's and that
    of the same student trained alone (same init, same batches, cross-entropy only)."""
    from litelm_edge.pipeline.model import Transformer
    steps = {"train.max_steps": 20, "train.eval_every": 20, "train.warmup_steps": 2, "train.lr": 3e-3}
    r = compress("distill", tiny_run, data_dir, tmp_path / "d",
                 dict(FT, **steps, **{"model.n_layer": 1, "model.n_embd": 32, "model.n_head": 2,
                                      "model.n_kv_head": 1, "model.intermediate_size": 64,
                                      "model.max_seq_len": 128}), **quiet)
    teacher, student, alone = (ckpt.load(p)[0] for p in (tiny_run, r["checkpoint"], tmp_path / "d-alone"))
    torch.manual_seed(1337)  # TrainConfig.seed: the student's and the baseline's initialisation
    init = Transformer(student.cfg).eval()
    kl = {name: _kl_to(teacher, m, data_dir) for name, m in [("init", init), ("alone", alone),
                                                             ("distilled", student)]}
    assert kl["distilled"] < kl["alone"] < kl["init"], kl
    assert r["params_after"] < r["params_before"] and student.cfg.n_layer == alone.cfg.n_layer == 1


def test_distill_rejects_another_tokenizer(tiny_run, data_dir, tmp_path):
    import shutil
    other = tmp_path / "data"
    shutil.copytree(data_dir, other)
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text().replace('"<|endoftext|>"', '"<|eot|>"'))
    with pytest.raises(UserError, match="another tokenizer"):
        compress("distill", tiny_run, other, tmp_path / "d", FT, **quiet)


@pytest.mark.parametrize("merge", ["first", "mean"])
def test_share_merge_equals_unshared_model_with_merged_layers(tiny_run, merge):
    """merge_layers of a 2-layer model: the logits of the same unshared model whose two layers both
    hold layer 0's weights (first) or the mean of the two (mean)."""
    from test_model import unshared_copy
    base = ckpt.load(tiny_run)[0]
    merged = share.merge_layers(base, share.ShareConfig(every=2, merge=merge)).eval()
    assert merged.cfg.share_every == 2 and merged.layer_order() == [0, 0]
    sd = {k: v for k, v in base.state_dict().items() if k.startswith("layers.0.")}
    if merge == "mean":
        sd = {k: (v + base.state_dict()[k.replace("layers.0.", "layers.1.")]) / 2 for k, v in sd.items()}
    block = type(base.layers[0])(base.cfg)
    block.load_state_dict({k.removeprefix("layers.0."): v for k, v in sd.items()})
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(merged(x)[0], unshared_copy(merged, [block, block])(x)[0], atol=1e-6,
                                   rtol=1e-6)
        assert (merged(x)[0] - base(x)[0]).abs().max() > 1e-3  # it did change the model
    assert base.num_params() - merged.num_params() == sum(p.numel() for p in block.parameters())


def test_share_compress_saves_a_shared_checkpoint(tiny_run, data_dir, tmp_path):
    r = compress("share", tiny_run, data_dir, tmp_path / "s", FT, **quiet)
    assert ckpt.load(r["checkpoint"])[0].layer_order() == [0, 0] and r["params_after"] < r["params_before"]


def test_compress_cli(tiny_run, data_dir, tmp_path):
    r = cli("compress", "prune", "--checkpoint", tiny_run, "--data", data_dir, "--out", tmp_path / "p",
            "--set", "sparsity=0.3", *[f"--set={k}={v}" for k, v in FT.items()])
    assert "prune:" in r.stdout and "val ppl" in r.stdout
    r = cli("compress", "squash", "--checkpoint", tiny_run, "--data", data_dir, "--out", tmp_path / "x",
            check=False)
    assert r.returncode == 2 and "unknown compression method 'squash', have: qat" in r.stderr


def _gated_recipe(corpus, data_dir, tiny_run, tmp_path, gates: str) -> Path:
    """A recipe whose data and train steps are conftest's data_dir and tiny_run (the same inputs and
    settings), placed in its workdir so the pipeline reuses them: the gates loop is what runs."""
    import shutil
    work = tmp_path / "work"
    shutil.copytree(data_dir, work / "data")
    meta = json.loads((work / "data" / "meta.json").read_text())
    (work / "data" / "meta.json").write_text(json.dumps(dict(meta, inputs=[str(corpus)])))
    shutil.copytree(tiny_run, work / "run")
    train_set = "\n".join(f'"{k}" = {v}' for k, v in (s.split("=") for s in TINY_SETS + TINY_TRAIN))
    recipe = tmp_path / "gated.toml"
    recipe.write_text(recipe_toml(tmp_path / "work", corpus, train_set, "int8", tail=f"""[bench]
reps = 1
warmup = 0
iters = 2
prompt_len = 8
gen_len = 4
concurrency = 1
qps_iters = 1
[gates]
{gates}
[[compress]]
method = "prune"
set = {{ ffn = 0.5, "train.max_steps" = 2, "train.eval_every" = 2, "train.eval_batches" = 1 }}
"""))
    return recipe


def test_failing_gate_applies_next_step_and_reports_attempts(corpus, data_dir, tiny_run, tmp_path):
    """An impossible perplexity gate: attempt 0 (PTQ) fails, attempt 1 (a compression step) runs too."""
    pytest.importorskip("onnxruntime")
    from litelm_edge.flows.run import run_recipe
    recipe = _gated_recipe(corpus, data_dir, tiny_run, tmp_path, "max_ppl_increase = -0.5\nmax_attempts = 5")
    logs = []
    r = run_recipe(str(recipe), log=logs.append)
    assert not r["ok"] and [a["attempt"] for a in r["attempts"]] == [0, 1]  # one step: 2 attempts, not 5
    # where it went, printed
    html = next(x for x in logs if x.startswith("bench report (x86): ")).split(": ", 1)[1]
    assert html == r["attempts"][1]["reports"]["x86"] and html.endswith("attempt-1/bench.html")
    assert f"run report: {tmp_path / 'work' / 'report.md'}" in logs
    a0, a1 = r["attempts"]
    assert a1["n_params"] < a0["n_params"] and a1["step"].startswith("prune")
    gate = a0["targets"][0]["gates"][0]
    assert gate["gate"] == "max_ppl_increase" and gate["pass"] is False
    text = (tmp_path / "work" / "report.md").read_text()
    assert "### Attempt 0" in text and "### Attempt 1: prune" in text and "**Verdict: FAIL** after 2 attempt(s)" in text


def test_build_refused_by_parity_is_a_failed_attempt_not_the_end(corpus, data_dir, tiny_run, tmp_path,
                                                                 monkeypatch):
    """An int8 build that fails its parity check fails that attempt's gate; the loop goes on."""
    pytest.importorskip("onnxruntime")
    from litelm_edge.flows import build as build_flow
    from litelm_edge.flows.run import run_recipe
    real, calls = build_flow.build, []

    def first_fails(*args, **kw):
        calls.append(args[1])
        if len(calls) == 1:
            raise build_flow.ParityError("parity failed for x86/int8: ppl ratio 1.5",
                                         {"ppl_ratio": 1.5, "rule": "ppl_ratio <= 1.03, mean_kl <= 0.03"})
        return real(*args, **kw)
    monkeypatch.setattr(build_flow, "build", first_fails)
    recipe = _gated_recipe(corpus, data_dir, tiny_run, tmp_path, "max_ppl_increase = 10.0\nmax_attempts = 2")
    r = run_recipe(str(recipe), log=lambda m: None)
    a0, a1 = r["attempts"]
    assert not a0["ok"] and a0["targets"][0]["gates"] == [
        {"gate": "build parity", "value": 1.5, "limit": "ppl_ratio <= 1.03, mean_kl <= 0.03", "pass": False,
         "note": "artifact vs torch on held-out text; not written, not benched"}]
    assert a1["ok"] and r["ok"] and len(calls) == 2
    text = (tmp_path / "work" / "report.md").read_text()
    assert "Target x86/int8: build refused by its parity check" in text and "### Attempt 1: prune" in text


def test_gates_pass_with_room():
    from litelm_edge.flows import gates
    bench = {"thresholds": [{"threshold": "max_latency_ms", "value": 5.0, "limit": 100, "pass": True,
                             "note": ""}],
             "parity": {"ok": True, "top1_agreement_vs_torch": 1.0}, "size_mb": 1.5,
             "prefill_ms": {"p50": 5.0}, "inferences_per_s": 200.0, "qps": {"qps": 300.0},
             "decode_tok_s": {"mean": 90.0}, "energy": {"j_per_inference": None}}
    rows = gates.judge({"max_ppl_increase": 0.05, "max_size_mb": 2.0, "max_attempts": 2}, 100.0, 103.0, bench)
    assert gates.passed(rows) and {r["gate"] for r in rows} == {"max_ppl_increase", "max_size_mb",
                                                                "max_latency_ms", "parity"}
    assert not gates.passed(gates.judge({"max_size_mb": 1.0}, 100.0, 100.0, bench))
    with pytest.raises(UserError, match="max_attempts"):
        gates.split({"max_attempts": 0})
