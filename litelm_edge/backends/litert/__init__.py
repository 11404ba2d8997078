"""LiteRT backend (target android): its runtime and precisions, one ai-edge-quantizer recipe each.

Build side: build.py (drives convert.py in the LiteRT venv: graph.py; inspect.py reads the
.tflite back). Device side: runtime.py.
"""
from dataclasses import dataclass

from ...config import UserError, at_least
from .. import FP32, INT4, INT8, QAT_ADVICE, Backend, GptqSettings, Precision

# Full-integer INT8 quantizes the attention scores too: a mask of -1e4 stretches their range and
# wrecks calibration, so int8-full masks with -30 (exact enough when scores stay well under 30).
# Every other precision keeps float scores and needs the large mask: with -30, a trained
# minimind-26m's later tokens leak into earlier ones (fp32 max abs logit error 9.6, parity fails).
FULL_INT_MASK = -30.0


@dataclass
class Settings(GptqSettings):  # + the INT4 precisions' gptq_windows, gptq_len, gptq_act_order
    """The target TOML's [litert] table (targets/android.toml), or --set litert.KEY / build.KEY."""
    threads: int = 4  # XNNPACK threads on the device
    prefill_len: int = 64  # tokens per prefill signature call; longer prompts run in chunks
    capacity: int = 512  # KV-cache length in tokens; a multiple of prefill_len
    mask_value: float = -1e4  # additive attention mask; int8-full clamps it to FULL_INT_MASK
    windows: str = "128"  # attention windows below capacity: a decode signature each
    prefill_windows: str | None = None  # the same for prefill signatures; None: as windows, "": none

    def validate(self):
        at_least(self, threads=1, prefill_len=1, capacity=1, gptq_windows=1, gptq_len=1)
        if self.capacity % self.prefill_len:
            raise UserError(f"capacity {self.capacity} must be a multiple of prefill_len {self.prefill_len}")


# INT4 blockwise flips more near-ties (0.90-0.95 on tiny and minimind-26m; +1.7 to +2.5 %
# perplexity on a trained minimind-26m, docs/android.md): held to INT4 and judged by
# perplexity too (benchmarks/litert_ppl.py). Scales are fp16.
PRECISIONS = (
    FP32,
    Precision("int8", 8, None, INT8, 0.25, QAT_ADVICE,
              "INT8 weights per channel, activations quantized on the fly (dynamic_wi8_afp32)"),
    Precision("int8-had", 8, None, INT8, 0.25, QAT_ADVICE,
              "INT8 as int8, weights rotated by 64 x 64 Hadamard blocks first (the graph rotates each "
              "input to match): outliers spread, SmolLM2-135M's cost +0.5 % instead of +4 %"),
    Precision("int8-full", 8, None, INT8, 0.25,
              about="INT8 weights and activations (static_wi8_ai8), calibrated on held-out text"),
    Precision("int4-b32", 4, 32, INT4, 0.14,
              about="INT4 weights in blocks of 32 with fp16 scales, the tied embedding / LM head too; every "
                    "code chosen by GPTQ on train.bin windows (snap.py)"),
    Precision("int4-b64", 4, 64, INT4, 0.13,
              about="int4-b32 in blocks of 64"),
    Precision("int4-gptq", 4, 32, INT4, 0.17,
              about="INT4 blocks of 32 for the layers' linears, codes chosen by GPTQ on train.bin "
                    "windows (snap.py), the tied embedding / LM head INT8 per channel (as q4_0: q8_0)"),
    Precision("int4-ch", 4, None, INT4, 0.13,
              advice="build --precision int4-b32 (a scale per 32 weights holds more), or a wider one",
              about="INT4 weights per output channel (XNNPACK's qd8 x qc4w GEMM: prefill ~1.5x int4-b32), "
                    "the tied embedding / LM head in blocks of 32; every code chosen by GPTQ (snap.py)"),
)

BACKEND = Backend("litert", "litert", PRECISIONS, Settings, "litert", extra="android",
                  host_modules=("ai_edge_litert",))

# Every INT4 precision's weights are chosen by GPTQ in the build process (backends/snap.py) on the
# quantizer's own INT4 grid before the conversion (convert.check_snapped: each comes back unchanged
# from its round-to-nearest): round to nearest alone cost SmolLM2-135M +60 % (int4-b32) to +135 %
# (int4-ch) perplexity, llama.cpp q4_0 +26 % (docs/quality.md). precision -> (the layers' INT4 block
# along the input, None: per output channel; the tied LM head's, None: INT8 per channel, not snapped)
SNAPPED = {"int4-b32": (32, 32), "int4-b64": (64, 64), "int4-ch": (None, 32), "int4-gptq": (32, None)}

