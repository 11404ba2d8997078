"""The hand-written TIR matmuls of backends/tvm/gemm.py against numpy, on small shapes: decode
(M = 1, the GEMV), a prefill with a ragged row tail (M = 5 with 4-row tiles), each precision's
dequantisation, and FuseTIR's parameter orders (an int8 group's constants come first). Compiled
for this CPU in the TVM venv (a few seconds a kernel)."""
from __future__ import annotations

import json
import subprocess

import pytest

from litelm_edge import toolchain

# Run in the TVM venv: compile each case, compare with numpy, print {case: max abs error}.
CHECK = r"""
import json, sys
import numpy as np, tvm
from tvm import tirx
from litelm_edge.backends.tvm import gemm, graph
import torch
rng = np.random.default_rng(0)
K, N, out = 96, 128, {}

def weights(prec):
    w = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32))  # torch layout (out, in)
    if prec == "int4-b32":
        packed, scale = graph.quantize_int4(w.t().contiguous())
        return (packed, scale), graph.dequantize_int4(packed, scale).numpy()
    lin = graph.KNLinear(w, prec)
    return lin, lin.weight_kn().numpy()  # the dequantised (K, N) matrix the kernel must apply

def run(func, args):
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target="llvm")
    t = [tvm.runtime.tensor(a) for a in args]
    lib["main"](*t)
    return t[-1].numpy()

for prec in sys.argv[1].split(","):
    lin, w = weights(prec)
    consts = {"fp32": lambda: [lin.w.numpy()], "int8": lambda: [lin.wq.numpy(), lin.scale.numpy()],
              "int4-b32": lambda: [lin[0].numpy(), lin[1].numpy()]}[prec]()
    for M in (1, 5):
        a = rng.standard_normal((M, K)).astype(np.float32)
        want = a @ w
        if prec == "int4-b32":  # its own kernel, called by Int4Matmuls in this order
            c = np.zeros((M, N), np.float32)
            for tile in ((4, 32), (4, 16)):
                got = run(gemm.gemm4(K, N, tile), [a, *consts, c])
                out[f"{prec} M={M} tile {tile}"] = float(np.abs(got - want).max() / np.abs(want).max())
            continue
        for first in ("act", "weights"):
            order = None if first == "act" else (len(consts), *range(len(consts)), len(consts) + 1)  # role -> position
            f = gemm.gemm(K, N, prec == "int8", tile=(4, 32), order=order)
            c = np.zeros((M, N), np.float32)
            args = [a, *consts, c] if first == "act" else [*consts, a, c]
            got = run(f, args)
            assert gemm.match(f) == (K, N, prec == "int8", order or tuple(range(len(args)))), gemm.match(f)
            out[f"{prec} M={M} {first} first"] = float(np.abs(got - want).max() / np.abs(want).max())
print(json.dumps(out))
"""


def test_int4_packing_round_trips_and_is_blocked():
    """quantize_int4 / dequantize_int4 in torch: error within half a step of each block's scale,
    one scale per 32 rows (a block with 10x larger weights gets a 10x larger scale)."""
    torch = pytest.importorskip("torch")
    from litelm_edge.backends.tvm.graph import dequantize_int4, quantize_int4
    w = torch.randn(64, 128)
    w[32:] *= 10
    packed, scale = quantize_int4(w)
    assert packed.shape == (64, 64) and packed.dtype == torch.uint8 and scale.shape == (2, 128)
    err = (dequantize_int4(packed, scale) - w).abs()
    assert (err <= scale.repeat_interleave(32, dim=0) / 2 + 1e-6).all()
    assert 5 < float(scale[1].mean() / scale[0].mean()) < 20
    with pytest.raises(ValueError, match="K % 32 == 0"):
        quantize_int4(torch.randn(40, 128))


def check(py, precisions: str) -> dict:
    r = subprocess.run([str(py), "-c", CHECK, precisions], capture_output=True, text=True,
                       env=toolchain.src_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4-b32"])
def test_gemm_matches_numpy_in_every_parameter_order(tvm_python, precision):
    errs = check(tvm_python, precision)
    assert len(errs) == 4, errs  # decode and prefill; in both parameter orders, or (int4) both tiles
    assert max(errs.values()) < 1e-5, errs  # the same sums up to fp32 rounding
