"""The fused x86 graph (onnxruntime-genai's builder) and its IO-binding runtime; thread choice."""
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai",
                    reason="the fused x86 graph is emitted by onnxruntime-genai's builder")

from litelm_edge.backends import INT8
from litelm_edge.config import UserError
from litelm_edge.devices import runner as dr
from litelm_edge.flows import build as build_flow
from x86_artifact import x86_artifact


@pytest.fixture(scope="module")
def art(tiny_run, data_dir, tmp_path_factory):
    return x86_artifact(tiny_run, data_dir, tmp_path_factory)  # fp32, the fused graph by default


def manifest(a):
    return json.loads((a / "manifest.json").read_text())


def test_fp32_fused_graph_passes_the_fp32_gate(art):
    import onnx
    m = manifest(art)
    ops = [n.op_type for n in onnx.load(str(art / m["graphs"]["decoder"]), load_external_data=False).graph.node]
    assert m["ort"]["graph"] == "fused" and m["kv_cache"] == "shared-buffer"
    assert ops.count("GroupQueryAttention") == m["model"]["n_layer"] and "Concat" not in ops
    assert "SkipSimplifiedLayerNormalization" in ops
    assert ops.count("Split") == m["model"]["n_layer"]  # gate and up: one MatMul a layer, split after it
    assert m["parity"]["ok"] and m["parity"]["max_abs_err"] <= 1e-3  # the fp32 gate, unchanged
    assert "onnxruntime_genai" in m["tools"]
    made_from = json.loads((Path(m["checkpoint"]) / "training.json").read_text())["model_sha256"]
    assert m["training"]["model_sha256"] == made_from  # the weights an artifact was built from, by hash


def test_io_binding_decode_equals_prefill_logits(art, data_dir):
    m = manifest(art)
    rt = dr.open_runtime(art, m, 1)
    ids = build_flow.heldout_windows(data_dir, 1, 48)[0]
    full = rt.prefill(ids)  # (T, V), every position (the parity path)
    assert full.shape == (len(ids), m["model"]["vocab_size"])
    ptrs = [c.data_ptr() for c in rt.cache]
    rt.prefill(ids[:8])
    dec = [rt.decode(int(t)) for t in ids[8:]]
    assert np.abs(np.stack(dec) - full[8:]).max() < 1e-4  # the cache written in place == one prefill
    assert [c.data_ptr() for c in rt.cache] == ptrs  # the same buffers, never reallocated
    k0 = rt.cache[0].numpy()  # (1, nkv, S, hd): positions past the sequence were never written
    assert np.abs(k0[:, :, len(ids):]).max() == 0 and np.abs(k0[:, :, :len(ids)]).max() > 0
    assert np.array_equal(dr.prefill_last(rt, ids), full[-1])  # serving: the LM head on 1 position


def test_decode_after_any_call_equals_a_fresh_runtime(art, data_dir):
    """A decode step binds only its token and the mask: whatever ran before it (a prefill of every
    position, a serving prefill, decode steps of another prompt), its logits are a fresh runtime's."""
    m = manifest(art)
    ids = build_flow.heldout_windows(data_dir, 1, 40)[0]
    fresh = dr.open_runtime(art, m, 1)
    fresh.prefill_last(ids[:10])
    want = [fresh.decode(int(t)) for t in ids[10:20]]
    rt = dr.open_runtime(art, m, 1)
    for first in (lambda: rt.prefill(ids), lambda: rt.prefill_last(ids[:30]),
                  lambda: [rt.decode(1) for _ in range(3)]):
        first()
        rt.prefill_last(ids[:10])
        got = [rt.decode(int(t)) for t in ids[10:20]]
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
        assert not np.shares_memory(got[0], got[1])  # each step's logits are the caller's to keep


FLUSH = """
import numpy as np, onnxruntime as ort
from onnx import TensorProto, helper
from litelm_edge.backends.ort.runtime import session_options
g = helper.make_graph([helper.make_node("Mul", ["x", "one"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                      [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])])
model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
x = np.array([1e-39, 1.0], np.float32)  # 1e-39: below float32's smallest normal, 1.18e-38
opts = session_options(ort, 1) if OURS else ort.SessionOptions()
print(ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0][0] > 0)
"""


@pytest.mark.parametrize("ours", [False, True])
def test_sessions_flush_denormals(ours):
    """ORT sessions flush denormal floats to zero (a trained model's MatMulNBits graphs decode 10-12 %
    faster): a denormal times one is zero through our session options, not through ORT's defaults.
    A fresh process each: the flush is a thread's floating-point state, kept once set."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", f"OURS = {ours}" + FLUSH], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == str(not ours)  # the denormal survives only without our options


def test_kv_cache_overflow_is_a_clear_error(art):
    m = manifest(art)
    rt = dr.open_runtime(art, m, 1)
    rt.prefill(np.zeros(m["model"]["max_seq_len"], np.int64))
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        rt.decode(0)


def test_fused_build_is_refused_by_the_parity_gate(tiny_run, data_dir, tmp_path, monkeypatch):
    from litelm_edge import backends
    monkeypatch.setattr(backends, "FP32_MAX_ABS", 0.0)  # the fp32 rule, read when parity is judged
    with pytest.raises(build_flow.ParityError, match="parity failed for x86/fp32"):
        build_flow.build(tiny_run, "x86", tmp_path / "x", "fp32", data_dir, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_int8_is_the_fused_graph_with_w8a8_and_one_copy_of_the_tied_embedding(x86_int8, x86_fp32, tiny_run, data_dir):
    """int8: the fused graph's MatMuls as dynamic W8A8 (ORT fuses them into DynamicQuantizeMatMul),
    the weights on 7 bits so that CPUs without VNNI compute what VNNI ones do (quantize_w8a8);
    the embedding gathers the LM head's own int8 columns, so no fp32 copy of the tied matrix stays."""
    import onnx
    from onnx import numpy_helper
    from litelm_edge.pipeline.eval import eval_artifact
    m = manifest(x86_int8)
    g = onnx.load(str(x86_int8 / m["graphs"]["decoder"])).graph
    ops = [n.op_type for n in g.node]
    assert m["ort"]["graph"] == "fused" and ops.count("GroupQueryAttention") == m["model"]["n_layer"]
    # qkv o gate+up down, head
    assert ops.count("MatMulInteger") == 4 * m["model"]["n_layer"] + 1 and "MatMul" not in ops
    assert "Transpose" in ops and ops.count("Gather") >= 2  # the embedding: columns of the head's int8 matrix
    big_floats = [i.name for i in g.initializer if numpy_helper.to_array(i).dtype == np.float32
                  and numpy_helper.to_array(i).size >= m["model"]["vocab_size"] * m["model"]["n_embd"] // 4]
    assert big_floats == []  # the tied matrix is stored once, in int8
    init = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    weights = [init[n.input[1]] for n in g.node if n.op_type == "MatMulInteger"]
    # 7-bit weights (reduce_range): 255 x 64 x 2 pairs fit the 16-bit sums of ORT's AVX2 kernel
    assert len(weights) == ops.count("MatMulInteger")
    assert max(np.abs(w.astype(int)).max() for w in weights) == 64
    assert m["parity"]["rule"] == str(INT8) and m["parity"]["ok"]
    ppl8, ppl32 = eval_artifact(x86_int8, data_dir)["ppl"], eval_artifact(x86_fp32, data_dir)["ppl"]
    assert abs(ppl8 / ppl32 - 1) < 0.01, (ppl8, ppl32)
    rt = dr.open_runtime(x86_int8, m, 1)
    ids = build_flow.heldout_windows(data_dir, 1, 24)[0]
    full = rt.prefill(ids)
    last = rt.prefill_last(ids)  # logits_to_keep kept through the rewrite; activations are quantised
    assert last.shape == full[-1].shape and last.argmax() == full[-1].argmax()  # per tensor, so the
    assert np.abs(last - full[-1]).max() < 0.05  # head's scale differs a little between 1 and T rows


def test_build_graph_option_and_settings_in_the_manifest(tiny_run, data_dir, tmp_path):
    """A target TOML's [ort] value (threads) and a --set one (graph) both reach manifest["ort"]."""
    from litelm_edge.config import data_dir as shipped
    target = tmp_path / "x86-2t.toml"
    target.write_text((shipped("targets") / "x86.toml").read_text() + "\n[ort]\nthreads = 2\n")
    with pytest.raises(UserError, match="grpah"):
        build_flow.build(tiny_run, "x86", tmp_path / "x", "fp32", data_dir, sets={"grpah": "export"},
                         log=lambda s: None)
    m = build_flow.build(tiny_run, str(target), tmp_path / "e", "fp32", data_dir,
                         sets={"ort.graph": "export"}, log=lambda s: None)
    # every setting as resolved (int4-gptq's calibration keys at their defaults: backends.GptqSettings)
    assert m["ort"] == {"graph": "export", "threads": 2,
                        "gptq_windows": 64, "gptq_len": 128, "gptq_act_order": True}
    assert "kv_cache" not in m and m["parity"]["ok"]
    rt = dr.open_runtime(tmp_path / "e", m, 1)
    assert type(rt).__name__ == "OrtRuntime"  # not the shared-buffer runtime
    # the runner reads [ort] threads through the runtime
    assert dr.choose_threads(dict(m, size_bytes=1e9)) <= 2
    with pytest.raises(UserError, match="graph must be fused or export"):
        build_flow.build(tiny_run, "x86", tmp_path / "y", "fp32", data_dir, sets={"graph": "onnx"},
                         log=lambda s: None)


def test_threads_follow_affinity_sessions_and_size(monkeypatch):
    monkeypatch.setattr(dr, "affinity", lambda: list(range(8)))
    big, small = {"backend": "ort", "size_bytes": 100e6}, {"backend": "ort", "size_bytes": 2e6}
    assert dr.choose_threads(big) == 8 and dr.choose_threads(big, sessions=4) == 2
    assert dr.choose_threads(dict(big, ort={"threads": 3})) == 3  # the build's [ort] threads caps it
    assert dr.choose_threads({"backend": "litert", "size_bytes": 100e6, "litert": {"threads": 4}}) == 4
    assert dr.choose_threads(small) == 1  # thread hand-offs cost more than a 2 MB model's matmuls
    monkeypatch.setattr(dr.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert dr.choose_spin(8) is False  # busy machine: workers sleep instead of spinning
    monkeypatch.setattr(dr.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    assert dr.choose_spin(8) is True and dr.choose_spin(2, sessions=4) is False and dr.choose_spin(1) is False
    plan = dr.thread_plan(big, None, None, 4)
    assert (plan["threads"], plan["qps_threads_per_session"], plan["affinity"]) == (8, 2, list(range(8)))
    assert dr.thread_plan(big, 3, False, 4)["qps_threads_per_session"] == 3  # --threads wins


def test_bench_reports_threads(art):
    from litelm_edge.devices.bench import bench
    r = bench(art, dict(reps=1, warmup=0, iters=2, prompt_len=8, gen_len=4, concurrency=2, qps_iters=1),
              log=lambda m: None)
    pro = r["protocol"]
    assert pro["threads"] >= 1 and pro["qps_threads_per_session"] >= 1 and pro["affinity"]
    assert "CPU affinity" in pro["chosen_by"] and r["parity"]["ok"]


def test_int4_gptq_writes_gptqs_codes_into_the_builders_graph(tiny_run, data_dir, tmp_path):
    """int4-gptq: GPTQ's layer weights (snap.py) replace the builder's round-to-nearest ones in its
    MatMulNBits initializers, bit for bit (decoded back from the shipped graph), the fused qkv and
    gate_up rows in the builder's order; the head stays the builder's 8-bit blocks."""
    import onnx
    import torch
    from onnx import numpy_helper as nh

    from litelm_edge.backends import snap
    from litelm_edge.backends.ort import gptq
    from litelm_edge.pipeline import checkpoint
    m = build_flow.build(tiny_run, "x86", tmp_path / "g", "int4-gptq", data_dir,
                         {"ort.gptq_windows": 8, "ort.gptq_len": 64}, log=lambda s: None)
    model = checkpoint.load(tiny_run, tokenizer=False)[0]
    cfg = model.cfg
    g = m["gptq"]
    assert m["parity"]["ok"] and g["snapped"] == {"weights": 7 * cfg.n_layer, "lossless": 7 * cfg.n_layer}
    assert (g["windows"], g["window_len"]) == (8, 64) and g["output_error_vs_rtn"]["max"] < 1
    graph = onnx.load(str(tmp_path / "g" / m["graphs"]["decoder"]))
    inits = {i.name: nh.to_array(i) for i in graph.graph.initializer}
    node = next(n for n in graph.graph.node if n.name.startswith("/model/layers.0/mlp/gate_up_proj/MatMul"))
    w = gptq.decode(inits[node.input[1]], inits[node.input[2]].reshape(2 * cfg.intermediate_size, -1))
    gate, up = np.split(w, 2)
    ref = {n: p.detach() for n, p in model.named_parameters()}
    for got, name in ((gate, "gate_proj"), (up, "up_proj")):
        assert snap.on_grid(torch.from_numpy(got))  # GPTQ's grid, not the builder's [-8, 7]
        rtn = snap.rtn(ref[f"layers.0.mlp.{name}.weight"])
        assert not torch.equal(torch.from_numpy(got), rtn)  # GPTQ moved codes off round-to-nearest
        assert torch.linalg.norm(torch.from_numpy(got) - ref[f"layers.0.mlp.{name}.weight"]) \
            < 0.5 * torch.linalg.norm(ref[f"layers.0.mlp.{name}.weight"])
    head = next(n for n in graph.graph.node if any(o == "logits" for o in n.output))
    assert {a.name: a.i for a in head.attribute}["bits"] == 8


def test_gptq_encode_round_trips_and_refuses_off_grid_weights():
    import torch

    from litelm_edge.backends import snap
    from litelm_edge.backends.ort import gptq
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    q = snap.gptq(w, torch.eye(64) * 2).numpy()
    b, s = gptq.encode(q)
    assert b.dtype == np.uint8 and b.shape == (8, 2, 16) and np.array_equal(gptq.decode(b, s), q)
    with pytest.raises(RuntimeError, match="not on the 4-bit grid"):
        gptq.encode(w.numpy())
