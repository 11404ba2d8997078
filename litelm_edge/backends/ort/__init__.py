"""ONNX Runtime backend (target x86 and any CPU with an ORT wheel): its runtime and precisions.

Build side: build.py (torch.export -> ONNX, ORT quantisers) and fused.py (onnxruntime-genai's
builder: the fused graph). Device side: runtime.py.
"""
from dataclasses import dataclass

from ...config import UserError, at_least
from .. import FP32, INT4, INT8, QAT_ADVICE, Backend, GptqSettings, Precision

# onnxruntime-genai builder options (fused.py) of the 4-bit rows, measured on SmolLM2-135M
# (docs/quality.md). The LM head, which is also the tied embedding, at 8 bits: the matrix whose error
# reaches the logits unmixed (llama.cpp's q4_0 keeps it at q8_0 too). k-quant (asymmetric blocks, the
# scale searched) beats round-to-nearest at 32 but crashes the builder on blocks of 64 or 128 over 576
# columns (an odd block count); Q4_K_M's mix (8 bits for the first and last eighth of the layers and
# every third layer's qkv and down projections) is what brings blocks of 64 and 128 under the bar.
HEAD8 = ("matmul_mixed_precision=last_matmul:int8",)
MIXED = ("matmul_mixed_precision=last_matmul:int8,mixed_layers:int8",)
PRECISIONS = (
    FP32,
    Precision("int8", 8, None, INT8, 0.25, QAT_ADVICE,
              "ORT dynamic W8A8: per-channel int8 MatMul weights, uint8 activations per call"),
    Precision("int8-b32", 8, 32, INT8, 0.28,
              about="weight-only int8 in blocks of 32 (MatMulNBits): fp32 perplexity"),
    Precision("int8-b256", 8, 256, INT8, 0.26,
              about="weight-only int8 in blocks of 256 (MatMulNBits): the fastest 8-bit decode"),
    Precision("int4-b32", 4, 32, INT4, 0.19, options=("algo_config=k_quant", *HEAD8),
              about="int4 k-quant blocks of 32 (MatMulNBits), the LM head and tied embedding 8-bit"),
    Precision("int4-gptq", 4, 32, INT4, 0.19, options=HEAD8,
              about="int4 blocks of 32 (MatMulNBits) whose layer codes GPTQ chose on train.bin windows "
                    "(backends/snap.py, ort/gptq.py), the LM head and tied embedding 8-bit"),
    Precision("int4-km", 4, 64, INT4, 0.19, options=MIXED,
              about="llama.cpp Q4_K_M's mix: int4 blocks of 64, the head and the sensitive layers 8-bit"),
    Precision("int4-b128", 4, 128, INT4, 0.19, options=MIXED,
              about="int4-km's mix in blocks of 128: the fastest 4-bit decode"),
)


@dataclass
class Settings(GptqSettings):  # + int4-gptq's gptq_windows, gptq_len, gptq_act_order
    """The target TOML's [ort] table, or --set ort.KEY / build.KEY."""
    graph: str = "fused"  # "fused": contrib-op graph by onnxruntime-genai's builder; "export": torch.export
    threads: int | None = None  # intra-op threads on the device at most; None: the runner's choice

    def validate(self):
        at_least(self, threads=1, gptq_windows=1, gptq_len=1)
        if self.graph not in ("fused", "export"):
            raise UserError(f"ort graph must be fused or export, got {self.graph!r}")


BACKEND = Backend("ort", "onnxruntime", PRECISIONS, Settings, "ort", extra="x86",
                  host_modules=("onnx", "onnxruntime", "onnxscript", "onnxruntime_genai"))
