"""Checkpoint -> model.tflite, run inside the LiteRT toolchain venv (litert-torch, ai-edge-quantizer).

    python -m litelm_edge.backends.litert.convert SPEC.json

SPEC: {checkpoint, out_dir, precision, prefill_len, capacity, mask_value, windows and
prefill_windows (attention windows below capacity of the decode and prefill signatures), calib
(npz of held-out windows, or null), weights (npz of snapped weights that replace the checkpoint's,
snap.py; or null)}. Writes out_dir/model.tflite
and out_dir/convert.json (timings, size breakdown, weight dtypes). One precision (the table in
__init__.py) is one quantization recipe, `_recipe`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from litelm_edge.backends.litert import PRECISIONS, SNAPPED


# A layer of a recipe: (tensor-name regex, TFLite op, weight bits, granularity, Hadamard rotation),
# all dynamic: weights int per channel or block, activations quantized to int8 on the fly. Later
# rows override earlier ones for the ops they name. The tied embedding is used by EMBEDDING_LOOKUP
# and the head's FULLY_CONNECTED: both get the same config, else the quantizer stores it twice per
# signature. The head is the FULLY_CONNECTED that writes the logits (".*logits_output.*").
#
# Rotation (ai-edge-quantizer's DECOMPOSED_HADAMARD_ROTATION, QuaRot's idea): each weight is
# multiplied by a Hadamard matrix along its input axis before it is quantized (with OCTAV's
# clipping), and the graph rotates each input the same way (a reshape and a float matmul), so the
# product is unchanged up to the rounding; the rotation spreads outlier channels over the others.
HEAD = ".*logits_output.*"
RECIPES = {
    "int8": ((".*", "ALL_SUPPORTED", 8, "CHANNELWISE", False),),
    "int8-had": ((".*", "ALL_SUPPORTED", 8, "CHANNELWISE", True),),
    "int4-b32": ((".*", "ALL_SUPPORTED", 4, "BLOCKWISE_32", False),),
    "int4-b64": ((".*", "ALL_SUPPORTED", 4, "BLOCKWISE_64", False),),
    # Per-channel INT4 for the layers' projections (XNNPACK's qd8 x qc4w GEMM, ~2x the blockwise
    # prefill); the tied embedding / LM head, whose noise flips the top token, in blocks of 32
    # (on a CPU-trained minimind-26m: top-1 0.952 against 0.919 all per channel). Per-channel
    # scales live in each signature's tensors, blockwise ones in buffers all signatures share.
    "int4-ch": ((".*", "ALL_SUPPORTED", 4, "CHANNELWISE", False),
                (".*", "EMBEDDING_LOOKUP", 4, "BLOCKWISE_32", False),
                (HEAD, "FULLY_CONNECTED", 4, "BLOCKWISE_32", False)),
    # The layers' linears in INT4 blocks of 32, their weights chosen by GPTQ on the quantizer's own
    # grid before conversion (snap.py: its round-to-nearest gives them back unchanged, checked by
    # `check_snapped`); the tied embedding / LM head INT8 per channel, as q4_0 keeps token_embd at q8_0.
    "int4-gptq": ((".*", "ALL_SUPPORTED", 4, "BLOCKWISE_32", False),
                  (".*", "EMBEDDING_LOOKUP", 8, "CHANNELWISE", False),
                  (HEAD, "FULLY_CONNECTED", 8, "CHANNELWISE", False)),
}
# The largest rotation: a power of 2 dividing the input width, capped at 64. Uncapped, SmolLM2's
# down_proj (1536 inputs) would rotate by 512 x 512 blocks (8x the multiply-adds of 64, a 1 MB float
# matrix); capped, every rotation is the same 64 x 64 matrix, one 16 kB buffer. The cap is the
# setting measured on SmolLM2 (docs/quality.md); uncapped was not re-measured.
MAX_HADAMARD = 64


def _recipe(precision: str):
    """The quantization recipe: RECIPES' layers, or int8-full's static one."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager
    op, gran = qtyping.TFLOperationName, qtyping.QuantGranularity
    rm = recipe_manager.RecipeManager()
    if precision == "int8-full":
        rm.add_static_config(regex=".*", operation_name=op.ALL_SUPPORTED, activation_num_bits=8,
                             weight_num_bits=8)
        rm.add_dynamic_config(regex=".*", operation_name=op.EMBEDDING_LOOKUP, num_bits=8)
        return rm.get_quantization_recipe()
    for regex, op_name, bits, granularity, rotate in RECIPES[precision]:
        if not rotate:
            rm.add_dynamic_config(regex=regex, operation_name=op[op_name], num_bits=bits,
                                  granularity=gran[granularity])
            continue
        # add_dynamic_config's config, plus the rotation's cap (it takes no algorithm_params)
        weight = qtyping.TensorQuantizationConfig(num_bits=bits, symmetric=True,
                                                  granularity=gran[granularity],
                                                  algorithm_params={"max_hadamard_size": MAX_HADAMARD})
        config = qtyping.OpQuantizationConfig(weight_tensor_config=weight, explicit_dequantize=False,
                                              compute_precision=qtyping.ComputePrecision.INTEGER)
        rm.add_quantization_config(regex, op[op_name], op_config=config,
                                   algorithm_key=algorithm_manager.AlgorithmName.DECOMPOSED_HADAMARD_ROTATION)
    return rm.get_quantization_recipe()


def signatures(prefill_len: int, capacity: int, windows=(), prefill_windows=()) -> list[tuple[str, int, int]]:
    """(name, attention window, tokens a call): `prefill_W` for every W in prefill_windows and
    `decode_W` for every W in windows, each plus the capacity."""
    return ([(f"prefill_{w}", w, prefill_len) for w in sorted(set(prefill_windows) | {capacity})]
            + [(f"decode_{w}", w, 1) for w in sorted(set(windows) | {capacity})])


def to_tflite(model, path: Path, prefill_len: int, capacity: int, mask_value: float, windows=(),
              prefill_windows=()):
    """Trace the `signatures`, all sharing one set of weights and the same caches; prefills run the
    LM head on their `last` position only (graph.CachedLM)."""
    import litert_torch
    from .graph import CachedLM, litert_update
    conv = litert_torch
    for name, w, T in signatures(prefill_len, capacity, windows, prefill_windows):
        g = CachedLM(model, capacity, mask_value, update=litert_update, window=w).eval()
        conv = conv.signature(name, g, sample_kwargs=g.sample_inputs(T))
    conv.convert().export(str(path))


def calibration_data(float_path: Path, texts, prefill_len: int) -> dict:
    """Signature inputs for calibration: prefill on held-out windows, then decode steps that
    continue each window from the caches the float model wrote (so decode sees real caches).
    Every signature gets the same inputs: they fit the smallest attention window (>= 2 chunks)."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(str(float_path))
    sigs = it.get_signature_list()
    pre_sig = max((s for s in sigs if s.startswith("prefill")), key=lambda s: int(s.split("_")[1]))
    pre, dec = it.get_signature_runner(pre_sig), it.get_signature_runner(pre_sig.replace("prefill", "decode"))
    names = [n for n in sigs[pre_sig]["inputs"] if n[:2] in ("k_", "v_")]
    spec = pre.get_input_details()
    feeds = {"prefill": [], "decode": []}
    for w in texts:  # held-out token windows
        w = np.asarray(w, np.int32)[:prefill_len + 4]
        T = min(len(w) - 4, prefill_len)  # the last 4 tokens feed decode steps
        caches = {n: np.zeros(spec[n]["shape"], np.float32) for n in names}
        ids = np.zeros((1, prefill_len), np.int32)
        ids[0, :T] = w[:T]
        feed = dict(tokens=ids, input_pos=np.arange(prefill_len, dtype=np.int32),
                    last=np.array([T - 1], np.int32), **caches)
        feeds["prefill"].append(feed)
        caches = {n: v for n, v in pre(**feed).items() if n != "logits"}
        for p in range(T, T + 4):
            feed = dict(tokens=w[p:p + 1][None], input_pos=np.array([p], np.int32), **caches)
            feeds["decode"].append(feed)
            caches = {n: v for n, v in dec(**feed).items() if n != "logits"}
    return {s: feeds[s.split("_")[0]] for s in sigs}


def recipe_record(recipe: list) -> list[dict]:
    """What the manifest says of the recipe the quantizer ran: one row per config, in its terms."""
    rows = []
    for r in recipe:
        w = r["op_config"]["weight_tensor_config"]
        rows.append(dict(regex=r["regex"], operation=str(r["operation"].value),
                         algorithm=str(r["algorithm_key"].value),
                         num_bits=w["num_bits"], granularity=str(w["granularity"].value),
                         compute_precision=str(r["op_config"]["compute_precision"].value),
                         **dict(w.get("algorithm_params") or {})))
    return rows


def quantize(float_path: Path, path: Path, precision: str, calib: list | None, prefill_len: int) -> list:
    """Writes the quantized model to path; returns the recipe it ran."""
    from ai_edge_quantizer import quantizer
    qt = quantizer.Quantizer(str(float_path))
    recipe = _recipe(precision)
    qt.load_quantization_recipe(recipe)
    result = None
    if qt.need_calibration:
        if not calib:
            raise SystemExit(f"precision {precision} needs held-out text for calibration: pass heldout")
        result = qt.calibrate(calibration_data(float_path, calib, prefill_len))
    qt.quantize(result).export_model(str(path), overwrite=True)
    return recipe


def requantized(w, block: int | None):
    """w (out, in) float32 after ai-edge-quantizer's INT4 round trip (BLOCKWISE_32 for block 32, CHANNELWISE
    for None), through its own functions (what naive_min_max_quantize does to a FULLY_CONNECTED weight)."""
    import numpy as np
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uq
    g = qtyping.QuantGranularity
    blocks = w.reshape(w.shape[0], -1, block or w.shape[1])
    zp, scale = uq.tensor_zp_scale_from_min_max(np.min(blocks, axis=2), np.max(blocks, axis=2), 4, True,
                                                g[f"BLOCKWISE_{block}"] if block else g.CHANNELWISE)
    params = qtyping.UniformQuantParams(num_bits=4, quantized_dimension=1 if block else 0, scale=scale,
                                        zero_point=zp, symmetric=True, block_size=block or 0)
    return uq.uniform_dequantize(uq.uniform_quantize(w, params, is_blockwise_quant=bool(block)), params)


def check_snapped(float_path: Path, n_snapped: int, vocab_size: int, blocks: tuple) -> dict:
    """Every FULLY_CONNECTED weight of the float graph (the LM head too when its block, blocks[1], is
    not None) must come back from the quantizer's INT4 re-quantization in its blocks (blocks[0]; None:
    per channel) bit for bit: the converter may not move the snapped weights. Fails the conversion
    otherwise. Returns {"weights", "lossless"}."""
    import numpy as np
    from ai_edge_litert.tools import flatbuffer_utils as fu
    layers, head = blocks  # the LM head (vocab rows): snapped in its own blocks, or not at all
    model = fu.read_model_from_bytearray(bytearray(float_path.read_bytes()))
    fc = {i for i, c in enumerate(model.operatorCodes) if max(c.builtinCode, c.deprecatedBuiltinCode) == 9}
    seen, lossless = set(), 0  # buffers: the signatures share them
    for sg in model.subgraphs:
        for op in sg.operators:
            t = sg.tensors[op.inputs[1]] if op.opcodeIndex in fc else None
            if t is None or t.buffer in seen or not len(model.buffers[t.buffer].data):
                continue
            seen.add(t.buffer)
            w = np.frombuffer(bytes(model.buffers[t.buffer].data), np.float32).reshape(t.shape)
            if w.shape[0] != vocab_size or head:
                blk = layers if w.shape[0] != vocab_size else head
                lossless += int(np.array_equal(requantized(w, blk), w))
    if len(seen) - (not head) != n_snapped or lossless != n_snapped:
        raise SystemExit(f"snapped weights: {lossless} of {n_snapped} survive the INT4 re-quantization "
                         f"({len(seen)} FULLY_CONNECTED weights in the graph): not built")
    return {"weights": n_snapped, "lossless": lossless}


def strip_names(path: Path) -> int:
    """Shrink the debug names: every signature repeats its ~650 tensors under long litert-torch
    scope names (~50 kB a signature, which int4-b32 cannot afford under 15 MB). Tensors that hold
    no weights lose their names (signature inputs and outputs keep theirs: the SignatureDefs hold
    them); a weight keeps the last two scopes of its last fused name ('MLP_mlp/Linear_up_proj',
    what inspect.breakdown reads) where it first appears and no name after. Returns the bytes saved."""
    from ai_edge_litert.tools import flatbuffer_utils as fu
    before = path.stat().st_size
    model = fu.read_model_from_bytearray(bytearray(path.read_bytes()))
    named = set()
    for sg in model.subgraphs:
        for t in sg.tensors:
            data = model.buffers[t.buffer].data if t.buffer else None
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name or "")
            t.name = ""
            if data is not None and len(data) and t.buffer not in named:
                named.add(t.buffer)
                # fused ops join names by ';'
                scope = [part for part in name.split(";") if "/" in part] or [name]
                t.name = "/".join(c.rsplit(".", 1)[-1] for c in scope[-1].split("/")[-2:])
    fu.write_model(model, str(path))
    return before - path.stat().st_size


def main(spec_path: str) -> int:
    import numpy as np
    import torch
    from ...pipeline.checkpoint import load
    from .inspect import breakdown, weight_dtypes
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out_dir"])
    have = [p.name for p in PRECISIONS]
    if spec["precision"] not in have:
        raise SystemExit(f"unknown precision '{spec['precision']}', have: {', '.join(have)}")
    model = load(spec["checkpoint"], tokenizer=False)[0]
    snapped = dict(np.load(spec["weights"])) if spec.get("weights") else {}
    for name, w in snapped.items():  # GPTQ's weights, on the quantizer's grid (snap.py)
        model.get_parameter(name).data = torch.from_numpy(w)
    t0 = time.time()
    float_path = out / ("model.tflite" if spec["precision"] == "fp32" else "float.tflite")
    to_tflite(model, float_path, spec["prefill_len"], spec["capacity"], spec["mask_value"], spec["windows"],
              spec["prefill_windows"])
    checked = check_snapped(float_path, len(snapped), model.cfg.vocab_size, SNAPPED[spec["precision"]]) \
        if snapped else None
    t1 = time.time()
    path = out / "model.tflite"
    recipe = []
    if spec["precision"] != "fp32":
        calib = list(np.load(spec["calib"]).values()) if spec.get("calib") else None
        recipe = quantize(float_path, path, spec["precision"], calib, spec["prefill_len"])
        float_path.unlink()
    stripped = strip_names(path)
    from importlib.metadata import version
    report = dict(versions={p: version(p) for p in ("litert-torch", "ai-edge-quantizer", "torch")},
                  convert_s=round(t1 - t0, 2), quantize_s=round(time.time() - t1, 2),
                  names_stripped_bytes=stripped, breakdown=breakdown(path, model.cfg.vocab_size),
                  weight_dtypes=sorted(weight_dtypes(path)), recipe=recipe_record(recipe),
                  snapped=checked)
    (out / "convert.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
