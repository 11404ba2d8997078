"""The x86 (ONNX Runtime) artifact: golden greedy tokens, manifest, parity gate, bench."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from litelm_edge import manifest
from litelm_edge.backends import INT4, INT8
from litelm_edge.config import UserError
from litelm_edge.devices.bench import bench
from litelm_edge.files import sha256_file
from litelm_edge.pipeline import checkpoint as ckpt
from litelm_edge.flows import build as build_flow
from litelm_edge.pipeline.generate import generate_artifact
from litelm_edge.pipeline.tokenizer import Tokenizer


@pytest.fixture(params=["fp32", "int8"])
def artifact(request):
    """conftest's session artifacts x86_fp32 / x86_int8 (read-only: copy before changing)."""
    return request.getfixturevalue(f"x86_{request.param}")


def test_golden_greedy_tokens_match_torch(artifact, tiny_run):
    model, tok_json, _ = ckpt.load(tiny_run)
    ids = Tokenizer(tok_json).encode("KING:\nSpeak")
    want = model.generate(torch.tensor([ids]), 24)[0].tolist()
    got = generate_artifact(artifact, ids, 24, 0.0, None, 0, eot=-1)
    assert got == want


def test_manifest_describes_the_artifact(artifact):
    m = json.loads((artifact / "manifest.json").read_text())
    assert m["format"] == "litelm-edge-artifact" and m["target"] == "x86" and m["runtime"] == "onnxruntime"
    for name, f in m["files"].items():
        assert sha256_file(artifact / name) == f["sha256"] and (artifact / name).stat().st_size == f["size"]
    assert m["thresholds"]["max_latency_ms"] == 100.0
    assert len(m["reference"]["artifact_last_logits"]) == m["model"]["vocab_size"]
    assert {"torch", "onnxruntime", "onnx"} <= set(m["tools"])
    # as many 128-token windows as the test corpus's val split holds, up to PARITY_WINDOWS
    assert 4 <= m["parity"]["windows"] <= build_flow.PARITY_WINDOWS and m["parity"]["window_len"] == build_flow.WINDOW_LEN
    if m["precision"] == "fp32":
        assert m["parity"]["rule"] == "max_abs_err <= 0.001" and m["parity"]["max_abs_err"] < 1e-4
    else:  # int8 weights really are int8, read back from the ONNX file
        assert m["parity"]["rule"] == str(INT8) and m["parity"]["ok"] and m["parity"]["top1_agreement"] >= 0.9
        # rounding may help a little by chance (the 7-bit W8A8 grid: 0.9995 at se 1.1e-4), not by 0.2 %
        floor = 1.0 - max(3 * m["parity"]["ppl_ratio_se"], 0.002)
        assert floor <= m["parity"]["ppl_ratio"] <= INT8.max_ppl_ratio
        assert m["weight_bytes"]["int8"] + m["weight_bytes"].get("uint8", 0) > 4 * m["weight_bytes"].get("float32", 0)


def test_int8_is_smaller_than_fp32(x86_fp32, x86_int8):
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (x86_fp32, x86_int8))
    # weights, not files: at 0.1M params the tokenizer and the int8 export graph's ~600 nodes weigh
    # as much as the weights (and the fused fp32 graph has ~90 nodes)
    assert sum(b["weight_bytes"].values()) < 0.35 * sum(a["weight_bytes"].values())
    # ORT stores the quantised Gather as uint8
    w8 = b["weight_bytes"]["int8"] + b["weight_bytes"].get("uint8", 0)
    assert w8 == pytest.approx(4 * b["n_params"] / 4, rel=0.05)


def test_weight_only_blocks_run_matmulnbits_and_keep_quality(tiny_run, data_dir, tmp_path):
    """int8-b32 / int4-b32: MatMulNBits weights, one Gather copy; int8-b32 is as good as fp32."""
    import onnx
    from litelm_edge.pipeline.eval import eval_artifact, eval_checkpoint
    ref = eval_checkpoint(tiny_run, data_dir)["ppl"]
    got = {}
    for p in ("int8-b32", "int4-b32"):
        m = build_flow.build(tiny_run, "x86", tmp_path / p, p, data_dir, log=lambda m: None)
        ops = [n.op_type for n in onnx.load(str(tmp_path / p / "decoder.onnx")).graph.node]
        assert m["ort"]["graph"] == "fused" and ops.count("GroupQueryAttention") == m["model"]["n_layer"]
        assert ops.count("MatMulNBits") == 4 * m["model"]["n_layer"] + 1  # qkv o gate+up down, lm_head
        assert "MatMul" not in ops and "MatMulInteger" not in ops  # every weight is in 8- or 4-bit blocks
        # int4: the tied embedding reads the LM head's blocks; int8: a uint8 Gather (the builder's
        # GatherBlockQuantized is 4-bit only)
        assert ("GatherBlockQuantized" in ops) == p.startswith("int4") and ("DequantizeLinear" in ops) == p.startswith("int8")
        if p == "int4-b32":
            _assert_8bit_tied_head(tmp_path / p, m)
        got[p] = (m, eval_artifact(tmp_path / p, data_dir)["ppl"])
    (m8, ppl8), (m4, ppl4) = got["int8-b32"], got["int4-b32"]
    assert m8["parity"]["top1_agreement"] >= 0.95 and abs(ppl8 / ref - 1) < 0.005
    # k-quant blocks and an 8-bit head: the tiny model's int4 is within noise of int8 (24.86 both)
    assert m4["parity"]["rule"] == str(INT4) and m4["parity"]["ok"] and ppl4 / ref < 1.05
    assert m4["size_bytes"] < m8["size_bytes"]
    with pytest.raises(UserError, match="unknown precision 'int3-b32' for onnxruntime, have: fp32, int8, "
                                        "int8-b32"):
        build_flow.build(tiny_run, "x86", tmp_path / "bad", "int3-b32", data_dir, log=lambda m: None)


def _assert_8bit_tied_head(art: Path, m: dict):
    """int4-b32: the builder options its row names are in the manifest and were obeyed: a 4-bit
    body, an 8-bit LM head, and the embedding a GatherBlockQuantized over the head's own bytes."""
    import onnx
    from litelm_edge.backends.ort import BACKEND
    assert m["ort"]["builder_options"][-2:] == list(BACKEND.precision("int4-b32").options)
    assert "algo_config=k_quant" in m["ort"]["builder_options"]
    g = onnx.load(str(art / "decoder.onnx"), load_external_data=False).graph
    bits = {n.name: onnx.helper.get_node_attr_value(n, "bits") for n in g.node if n.op_type == "MatMulNBits"}
    head = next(n for n in g.node if n.op_type == "MatMulNBits" and "lm_head" in n.name)
    gather = next(n for n in g.node if n.op_type == "GatherBlockQuantized")
    reshape = next(n for n in g.node if n.output[0] == gather.input[0])
    assert bits[head.name] == 8 and sorted(set(bits.values())) == [4, 8] and list(bits.values()).count(8) == 1
    assert onnx.helper.get_node_attr_value(gather, "bits") == 8
    assert reshape.input[0] == head.input[1] and list(gather.input[2:]) == [x for x in head.input[2:4] if x]
    inits = {i.name for i in g.initializer}
    assert set(head.input[1:4]) - {""} <= inits  # one copy of the head, read by both


def test_export_graph_refuses_a_builder_recipe(tiny_run, tmp_path):
    """int4-b32 is the builder's k-quant recipe: the torch.export graph says so, it does not
    silently make a different int4."""
    with pytest.raises(UserError, match=r"torch.export graph cannot make int4-b32 .*it makes: fp32, int8, "):
        build_flow.build(tiny_run, "x86", tmp_path / "x", "int4-b32", sets={"graph": "export"},
                         log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def _perturb_one_weight(art: Path, dtype, change):
    """Change the largest `dtype` weight of the built decoder.onnx in place (graph and .data)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    path = art / "decoder.onnx"
    m = onnx.load(str(path))  # external data read into memory
    external = [p for p in art.iterdir() if p.name.startswith("decoder.onnx.")]
    for p in external:
        p.unlink()
    init = max((i for i in m.graph.initializer if numpy_helper.to_array(i).dtype == np.dtype(dtype)),
               key=lambda i: numpy_helper.to_array(i).size)
    init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init).copy()), init.name))
    onnx.save(m, str(path), save_as_external_data=bool(external), location="decoder.onnx.data")


@pytest.mark.parametrize("precision, dtype, change, why", [
    # +0.003 on every lm_head weight: top-1 unchanged, logits off by ~0.2: only fp32's 1e-3 rule sees it
    ("fp32", "float32", lambda w: w + np.float32(0.003), "max abs err"),
    # one int8 matrix negated: perplexity far off torch's
    ("int8", "int8", lambda w: -w, "perplexity and KL"),
], ids=["fp32", "int8"])
def test_perturbed_weight_fails_parity_and_writes_nothing(tiny_run, data_dir, tmp_path, monkeypatch,
                                                          precision, dtype, change, why):
    """The build's artifact differs from the checkpoint in one exported weight: refused, not written."""
    import types
    from litelm_edge import backends
    real = backends.Backend.module

    def tampered(self, part):
        mod = real(self, part)
        if part != "build":
            return mod

        def build(ctx):
            res = mod.build(ctx)
            _perturb_one_weight(Path(ctx.out_dir), dtype, change)
            return res
        return types.SimpleNamespace(build=build)
    monkeypatch.setattr(backends.Backend, "module", tampered)
    with pytest.raises(build_flow.ParityError, match="parity failed for x86/" + precision) as e:
        build_flow.build(tiny_run, "x86", tmp_path / "x", precision, data_dir, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []
    p = e.value.parity
    if precision == "fp32":  # the 1e-3 rule, not top-1, refused it
        assert p["top1_agreement"] == 1.0 and 1e-3 < p["max_abs_err"] < 1.0 and p["rule"] == "max_abs_err <= 0.001"
    else:  # the quality rule refused it: the ratio and KL are far over the bar, not near it
        assert p["rule"] == str(INT8) and p["ppl_ratio"] > 1.2 * INT8.max_ppl_ratio and p["mean_kl"] > 3 * INT8.max_mean_kl


def test_build_killed_midway_keeps_the_previous_artifact(x86_fp32, tiny_run, data_dir, tmp_path):
    """`litelm-edge build` SIGKILLed once it has written the new graph (at its parity check): the
    artifact that was there is whole, byte for byte, and every file still matches its manifest."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    art = tmp_path / "art"
    shutil.copytree(x86_fp32, art)
    before = {p.name: sha256_file(p) for p in art.iterdir()}
    cmd = [sys.executable, "-m", "litelm_edge.cli", "build", "--target", "x86", "--checkpoint", str(tiny_run),
           "--out", str(art), "--precision", "int8", "--data", str(data_dir)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in p.stdout:  # every file of the new artifact is written; its manifest is not yet
        if line.startswith("parity check"):
            break
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, "the build ended before it could be killed mid-way"
    assert {p.name: sha256_file(p) for p in art.iterdir()} == before
    m = json.loads((art / "manifest.json").read_text())
    assert m["precision"] == "fp32" and all(sha256_file(art / n) == f["sha256"] for n, f in m["files"].items())
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["art"]


@pytest.mark.parametrize("graph", ["fused", "export"])
def test_float_artifact_claiming_int8_fails(graph, tiny_run, tmp_path, monkeypatch):
    import shutil
    from litelm_edge.backends.ort import build as ort_build, fused

    def no_quantisation(src, dst):  # a quantiser that silently leaves float weights
        shutil.copy(src, dst)
        shutil.copy(src.parent / (src.name + ".data"), dst.parent / (src.name + ".data"))
    monkeypatch.setattr(ort_build, "quantize_int8", no_quantisation)  # the export graph's
    monkeypatch.setattr(fused, "w8a8", lambda path, tmp: None)  # the fused graph's: in place
    with pytest.raises(UserError, match="quantiser did not apply"):
        build_flow.build(tiny_run, "x86", tmp_path / "x", "int8", sets={"graph": graph}, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_bench_protocol_and_report(artifact):
    r = bench(artifact, dict(reps=2, warmup=1, iters=3, prompt_len=16, gen_len=8, concurrency=2, qps_iters=2),
              log=lambda m: None)
    assert r["parity"]["ok"] and r["parity"]["top1_agreement_vs_torch"] >= 0.95
    assert r["prefill_ms"]["n"] == 6 and len(r["decode_ms_per_token"]["samples"]) == 16
    assert 0 < r["prefill_ms"]["p50"] <= r["prefill_ms"]["p99"]
    assert r["qps"]["sessions"] == 2 and r["qps"]["qps"] > 0 and r["peak_rss_mb"] > 10
    assert r["energy"]["how"].startswith("estimated (cpu-time-linear") and r["energy"]["j_per_inference"] > 0
    assert r["energy"]["runner"]["sensor"] is None and "no RAPL or hwmon" in r["energy"]["runner"]["note"]
    assert {t["threshold"] for t in r["thresholds"]} == {"max_latency_ms", "min_inferences_per_s", "min_qps"}
    assert r["provenance"] == "measured on this host (local bench)"


def test_bench_fails_on_tampered_reference(artifact, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["reference"]["torch_greedy"] = [(t + 1) % m["model"]["vocab_size"] for t in m["reference"]["torch_greedy"]]
    manifest.write(bad, m)  # a wrong reference under a valid id: the runner's parity must catch it
    r = bench(bad, dict(reps=1, warmup=0, iters=1, prompt_len=8, gen_len=2, concurrency=1, qps_iters=1),
              log=lambda m: None)
    assert not r["parity"]["ok"] and not r["ok"]


def test_shared_layers_build_as_int8_with_weights_stored_once(data_dir, tmp_path):
    """Cross-layer sharing: the shared weights reach their MatMuls through one Transpose, which
    ORT's quantiser skips unless the build folds it; the int8 bytes count each block once."""
    from conftest import TINY_SETS
    from litelm_edge.config import parse_sets, split_sets
    from litelm_edge.pipeline.model import Transformer, preset
    from litelm_edge.pipeline.tokenizer import Tokenizer as T
    cfg = preset("tiny", dict(split_sets(parse_sets(TINY_SETS), "model")[0], n_layer=4, share_every=2))
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.embed_tokens.weight.data *= 30  # well-separated logits: parity is about the export, not ties
    ckpt.save(tmp_path / "c", model, T.load(data_dir).to_str(), {"step": 0, "data_dir": str(data_dir)})
    m = build_flow.build(tmp_path / "c", "x86", tmp_path / "a", "int8", log=lambda s: None)
    assert m["ort"]["graph"] == "export"  # the fused graph's builder would store each layer's copy
    block = sum(p.numel() for n, p in model.layers[0].named_parameters() if p.dim() == 2)
    emb = model.embed_tokens.weight.numel()
    # the 2 unique blocks once each, and the tied embedding once (uint8, read by Gather and lm_head)
    assert m["weight_bytes"]["int8"] == pytest.approx(2 * block, rel=0.03)
    assert m["weight_bytes"]["uint8"] == pytest.approx(emb, rel=0.01)
    assert m["weight_bytes"]["float32"] < 0.1 * m["weight_bytes"]["int8"]


def test_local_bench_reads_energy_under_an_injected_sysfs_root(artifact, tmp_path):
    """bench(sysfs_root=...) reaches the runner's energy meter: a fake RAPL counter is the sensor."""
    zone = tmp_path / "sys/class/powercap/intel-rapl:0"
    zone.mkdir(parents=True)
    for name, text in {"name": "package-0", "energy_uj": "5", "max_energy_range_uj": "1000000000"}.items():
        (zone / name).write_text(text)
    r = bench(artifact, dict(reps=1, warmup=0, iters=1, prompt_len=8, gen_len=2, concurrency=1, qps_iters=1),
              log=lambda m: None, sysfs_root=tmp_path / "sys")
    assert r["energy"]["how"] == "measured (rapl:package-0)" and r["energy"]["j_per_inference"] == 0.0
