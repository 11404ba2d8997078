"""ONNX Runtime backend (target x86 and any CPU with an ORT wheel): its runtime and precisions.

Build side: build.py (torch.export -> ONNX, ORT quantisers) and fused.py (onnxruntime-genai's
builder: the fused graph). Device side: runtime.py.
"""
from dataclasses import dataclass

from .. import FP32, INT4, INT8, QAT_ADVICE, Precision

RUNTIME = "onnxruntime"
EXTRA, HOST_MODULES = "x86", ("onnx", "onnxruntime", "onnxscript", "onnxruntime_genai")  # pyproject extra that installs what the build imports here
PRECISIONS = (
    FP32,
    Precision("int8", 8, None, INT8, 0.25, QAT_ADVICE,
              "ORT dynamic W8A8: per-channel int8 MatMul weights, uint8 activations per call"),
    Precision("int8-b32", 8, 32, INT8, 0.28,
              about="weight-only int8 in blocks of 32 (MatMulNBits): fp32 perplexity"),
    Precision("int8-b256", 8, 256, INT8, 0.26,
              about="weight-only int8 in blocks of 256 (MatMulNBits): the fastest 8-bit decode"),
    Precision("int4-b32", 4, 32, INT4, 0.16, about="weight-only int4 in blocks of 32 (MatMulNBits)"),
    Precision("int4-b64", 4, 64, INT4, 0.14, about="weight-only int4 in blocks of 64 (MatMulNBits)"),
    Precision("int4-b128", 4, 128, INT4, 0.13,
              about="weight-only int4 in blocks of 128 (MatMulNBits): the fastest 4-bit decode"),
)

SECTION = "ort"  # --set build.graph=export (or ort.graph)


@dataclass
class Settings:
    graph: str = "fused"  # "fused": contrib-op graph by onnxruntime-genai's builder; "export": torch.export
