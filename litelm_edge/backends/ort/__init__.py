"""ONNX Runtime backend (target x86 and any CPU with an ORT wheel): its runtime and precisions.

Build side: build.py (torch.export -> ONNX, ORT quantisers) and fused.py (onnxruntime-genai's
builder: the fused graph). Device side: runtime.py.
"""
from dataclasses import dataclass

from ...config import UserError, at_least
from .. import FP32, INT4, INT8, QAT_ADVICE, Backend, Precision

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


@dataclass
class Settings:
    """The target TOML's [ort] table, or --set ort.KEY / build.KEY."""
    graph: str = "fused"  # "fused": contrib-op graph by onnxruntime-genai's builder; "export": torch.export
    threads: int | None = None  # intra-op threads on the device at most; None: the runner's choice

    def validate(self):
        at_least(self, threads=1)
        if self.graph not in ("fused", "export"):
            raise UserError(f"ort graph must be fused or export, got {self.graph!r}")


BACKEND = Backend("ort", "onnxruntime", PRECISIONS, Settings, "ort", extra="x86",
                  host_modules=("onnx", "onnxruntime", "onnxscript", "onnxruntime_genai"))
