"""Apache TVM backend (targets rpi4, rpi5, x86-tvm): its runtime and precisions.

Build side: build.py (drives convert.py in the TVM venv: graph.py, schedule.py, gemm.py; serve.py
for host parity; tune.py picks the tile on a device). Device side: runtime.py.
"""
from .. import FP32, INT8_MIN_TOP1, QAT_ADVICE, Precision

RUNTIME = "tvm"
PRECISIONS = (
    FP32,
    Precision("int8", 8, None, INT8_MIN_TOP1, 0.25, QAT_ADVICE,
              "weight-only per-channel int8, dequantised inside the matmul"),
)
