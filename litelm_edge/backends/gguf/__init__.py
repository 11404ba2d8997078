"""GGUF backend (target gguf): one `model.gguf` that llama.cpp, Ollama and llama-cpp-python load.

Build side: build.py (llama.cpp's own `gguf` package writes the file: "llama" architecture, our
byte-level BPE as llama.cpp's "gpt2" tokenizer with the "gpt-2" pre-tokenizer, weights F32 or
quantised by gguf's quants module). Device side: runtime.py (llama-cpp-python over libllama).

Precisions are named as llama.cpp names its tensor types (q8_0, q4_0); fp32 is llama.cpp's f32.
Every matrix takes the type, the embedding included (llama-quantize --pure): 1-D norms stay f32.
There is no "int8" here: llama.cpp has no such type, and q8_0 (int8 in blocks of 32, an f16
scale each) says what the file holds.
"""
from dataclasses import dataclass

from ...config import UserError
from .. import FP32, INT4, INT8, Backend, Precision

WIDER = "build --precision q8_0 (or fp32)"


@dataclass
class Settings:
    # the runtime's KV cache: f32 keeps fp32 parity within 1e-3; f16 is llama.cpp's default
    kv_type: str = "f32"
    flash_attn: bool = False  # llama.cpp's flash attention on the CPU (rounds Q to the cache's type)

    def validate(self):
        if self.kv_type not in ("f32", "f16"):
            raise UserError(f"gguf kv_type must be f32 or f16, got {self.kv_type!r}")


# size_ratio: q8_0 stores 32 int8 + one f16 scale per block (34 / 128 bytes of fp32), q4_0 32
# nibbles + one f16 scale (18 / 128)
PRECISIONS = (
    FP32,
    Precision("q8_0", 8, 32, INT8, 34 / 128, "build --precision fp32",
              "llama.cpp Q8_0: int8 blocks of 32, an f16 scale each (activations rounded to Q8_0 by block)"),
    Precision("q4_0", 4, 32, INT4, 18 / 128, WIDER,
              "llama.cpp Q4_0: 4-bit in blocks of 32 with an f16 scale, the embedding included (--pure)"),
)


# the target TOML's [gguf] table holds Settings; the pyproject extra `gguf` installs the writer
BACKEND = Backend("gguf", "llama.cpp", PRECISIONS, Settings, "gguf", extra="gguf",
                  host_modules=("gguf", "llama_cpp"))
