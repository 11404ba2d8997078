"""int4-gptq: GPTQ on ai-edge-quantizer's INT4 grid (backends/snap.py).

The grid's round trip is checked against the quantizer's own functions in the LiteRT toolchain
venv (skipped when it cannot be made); GPTQ against round-to-nearest on a synthetic layer whose
inputs are correlated, as a transformer's are; the precision end to end on the tiny model.
"""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="GPTQ runs in torch: bash tools/setup.sh --dev "
                            "installs torch==2.13.0")

from conftest import toolchain_or_skip  # noqa: E402
from litelm_edge import toolchain  # noqa: E402
from litelm_edge.backends import snap  # noqa: E402
from litelm_edge.backends.litert import Settings  # noqa: E402
from litelm_edge.backends.litert import build as litert_build  # noqa: E402
from litelm_edge.config import UserError  # noqa: E402


def layer(n_out=48, n_in=256, n=2000, seed=0):
    """(w, H): a weight with a few large rows, inputs mixed by a random matrix plus outlier channels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_out, n_in, generator=g) * torch.logspace(-2, 0, n_out)[:, None]
    x = torch.randn(n, n_in, generator=g) @ torch.randn(n_in, n_in, generator=g) / n_in ** 0.5
    x[:, :4] *= 20  # outlier channels, as LLM activations have
    h = snap.Hessian(n_in)
    h.add(x)
    return w, h.get()


def test_gptq_codes_sit_on_the_quantizers_grid():
    """Each block: |code| <= 7 with one at 7 on a scale bf16 and fp16 both hold, so that max|w| / 7
    gives the scale back; RTN's fixed point, which raw weights are not."""
    w, H = layer()
    q = snap.gptq(w, H)
    assert snap.on_grid(q) and not snap.on_grid(w)
    blocks = q.reshape(q.shape[0], -1, snap.BLOCK)
    s = blocks.abs().amax(-1, keepdim=True) / snap.QMAX
    assert torch.equal(snap.grid(s), s)
    codes = blocks / s
    assert torch.equal(codes, codes.round()) and codes.abs().max() == snap.QMAX


def test_gptq_output_error_well_below_rtn():
    """On correlated inputs GPTQ moves each rounding error onto the columns not yet quantized:
    SmolLM2's layer 0 gets 0.19-0.29x RTN's output error; the scale search alone 0.63-0.70x."""
    w, H = layer()
    e_rtn = snap.output_error(w, snap.rtn(w), H)
    assert snap.output_error(w, snap.gptq(w, H), H) < 0.6 * e_rtn
    q = snap.gptq(w, H, act_order=True)  # static groups: still on the grid
    assert snap.on_grid(q) and snap.output_error(w, q, H) < 0.6 * e_rtn


def test_per_channel_and_wider_blocks_sit_on_the_grid_and_beat_rtn():
    """int4-ch (one scale a row, float32) and int4-b64: the same grid, the scale fixed from the row or
    block before any column moves; each still below round-to-nearest's output error."""
    w, H = layer()
    for block in (None, 64):
        q = snap.gptq(w, H, block=block)
        assert snap.on_grid(q, block) and not snap.on_grid(q, 32 if block is None else None)
        assert snap.output_error(w, q, H) < 0.8 * snap.output_error(w, snap.rtn(w, block), H)
    with pytest.raises(ValueError, match="multiple of the block 64"):
        snap.gptq(w[:, :96], H[:96, :96], block=64)


def test_quantize_model_snaps_the_tied_head_when_asked():
    """head=32: the LM head, tied to the embedding, GPTQ'd on the final norm's outputs in blocks of 32."""
    from litelm_edge.pipeline.model import Transformer, preset
    torch.manual_seed(0)
    m = Transformer(preset("tiny")).eval()
    weights, ratio = snap.quantize_model(m, torch.randint(0, m.cfg.vocab_size, (4, 32)), group=None, head=32)
    assert len(weights) == 7 * len(m.layers) + 1 and ratio["lm_head"] < 1
    assert snap.on_grid(torch.from_numpy(weights["lm_head.weight"]), 32)
    assert snap.on_grid(torch.from_numpy(weights["layers.0.mlp.up_proj.weight"]), None)
    assert m.embed_tokens.weight is m.lm_head.weight  # still tied: the embedding reads the head's codes


def test_quantize_model_snaps_every_linear_and_leaves_the_model_it_was_given_apart():
    from litelm_edge.pipeline.model import Transformer, preset
    torch.manual_seed(0)
    m = Transformer(preset("tiny")).eval()
    weights, ratio = snap.quantize_model(m, torch.randint(0, m.cfg.vocab_size, (4, 32)))
    assert len(weights) == len(ratio) == 7 * len(m.layers)
    assert all(snap.on_grid(torch.from_numpy(w)) for w in weights.values())
    name = "layers.0.mlp.down_proj.weight"
    assert torch.equal(m.get_parameter(name), torch.from_numpy(weights[name]))
    assert max(ratio.values()) < 1


def test_a_width_off_the_block_is_one_line():
    from litelm_edge.pipeline.model import Transformer, preset
    m = Transformer(preset("tiny", {"intermediate_size": 40})).eval()
    with pytest.raises(UserError, match="multiples of 32"):
        snap.quantize_model(m, torch.zeros(1, 8, dtype=torch.long))


def test_calibration_reads_train_bin_only(tmp_path):
    with pytest.raises(UserError, match="train.bin"):
        snap.train_windows(tmp_path, 4, 16)
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "train.bin")
    with pytest.raises(UserError, match="fewer than 8 x 16"):
        snap.train_windows(tmp_path, 8, 16)
    w = snap.train_windows(tmp_path, 4, 16)
    assert w.shape == (4, 16) and w[0, 0] == 0 and w[-1, -1] == 99
    with pytest.raises(UserError):
        Settings(gptq_windows=0).validate()


@pytest.fixture(scope="module")
def litert_python():
    pytest.importorskip("ai_edge_litert", reason="the android extra's host runtime: "
                                                 "bash tools/setup.sh --dev")
    return toolchain_or_skip(litert_build.python, "LiteRT")


@pytest.mark.parametrize("block", [32, 64, None])
def test_rtn_and_lossless_snap_agree_with_ai_edge_quantizer(litert_python, tmp_path, block):
    """snap.rtn is the quantizer's own round trip (convert.requantized calls its functions) in blocks of
    32 and 64 (down to fp16-subnormal scales) and per channel (float32 scales); a snapped weight comes
    back from it bit for bit."""
    w, H = layer()
    w = w * torch.logspace(-5, 1, w.shape[0])[:, None]  # scales from fp16 subnormals up
    np.savez(tmp_path / "w.npz", w=w.numpy(), rtn=snap.rtn(w, block).numpy(),
             q=snap.gptq(w, H, block=block).numpy())
    code = ("import json, sys, numpy as np; from litelm_edge.backends.litert.convert import requantized; "
            f"d = np.load(sys.argv[1]); "
            f"same = lambda a, b: bool(np.array_equal(requantized(d[a], {block}), d[b])); "
            "print(json.dumps([same('w', 'rtn'), same('q', 'q')]))")
    r = subprocess.run([str(litert_python), "-c", code, str(tmp_path / "w.npz")], env=toolchain.src_env(),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [True, True]


def test_int4_gptq_builds_through_the_gate(litert_python, data_dir, tmp_path):
    """The precision end to end on a random tiny model: INT4 linears, an INT8 embedding / head,
    the calibration recorded, every snapped weight found in the float graph and re-quantized losslessly."""
    from litelm_edge.flows.build import build
    from litelm_edge.pipeline import checkpoint
    from litelm_edge.pipeline.model import Transformer, preset
    torch.manual_seed(0)
    m = Transformer(preset("tiny")).eval()
    tok = (data_dir / "tokenizer.json").read_text()
    ck = checkpoint.save(tmp_path / "ck", m, tok, {"data_dir": str(data_dir)})
    sets = {"prefill_len": 16, "capacity": 128, "windows": "32", "gptq_windows": 8, "gptq_len": 64}
    man = build(ck, "android", tmp_path / "a", "int4-gptq", data_dir, sets, log=lambda s: None)
    g = man["gptq"]
    assert man["weight_dtypes"] == ["int4", "int8"] and man["parity"]["ok"]
    assert g["snapped"] == {"weights": 7 * m.cfg.n_layer, "lossless": 7 * m.cfg.n_layer}
    assert (g["windows"], g["window_len"], g["data"]) == (8, 64, str(data_dir / "train.bin"))
    assert man["litert"]["gptq_windows"] == 8 and g["output_error_vs_rtn"]["max"] < 1
