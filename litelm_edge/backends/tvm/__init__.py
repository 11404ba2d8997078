"""Apache TVM backend (targets rpi4, rpi5, x86-tvm): its runtime and precisions.

Build side: build.py (drives convert.py in the TVM venv: graph.py, schedule.py, gemm.py; serve.py
for host parity; flows/tune.py picks the tile on a device). Device side: runtime.py.
"""
from dataclasses import dataclass

from ...config import UserError, at_least
from .. import FP32, INT4, INT8, QAT_ADVICE, Backend, GptqSettings, Precision


@dataclass
class Settings(GptqSettings):  # + int4-gptq's gptq_windows, gptq_len, gptq_act_order
    """The target TOML's [tvm] table (targets/rpi4.toml), or --set tvm.KEY / build.KEY."""
    # a TVM tag ("raspberry-pi/4b-aarch64") or a table {kind, mtriple, mcpu, ...}
    target: str | dict | None = None
    cc: str | None = None  # links the library; None: this machine's g++
    cc_package: str = "g++-aarch64-linux-gnu"  # Debian package named when cc is missing
    tile: list[int] | None = None  # matmul register tile, rows x columns; None: the schedule's default
    # decode (M = 1) GEMV columns a task: gemv fp32 accumulators, kept in registers under 1024 bytes;
    # None: the schedule's default (64: 16 NEON q-registers); a matrix whose N it does not divide gets 64
    gemv: int | None = None

    def validate(self):
        at_least(self, gptq_windows=1, gptq_len=1)
        if self.target is None:
            raise UserError("the target TOML has no [tvm] target: add e.g. target = "
                            "\"raspberry-pi/4b-aarch64\"")
        if self.tile is not None and (len(self.tile) != 2 or min(self.tile) < 1):
            raise UserError(f"tvm tile must be two positive ints MT,NJ (e.g. 4,16), got {self.tile!r}")
        if self.gemv is not None and not (16 <= self.gemv < 256 and self.gemv % 16 == 0):
            raise UserError(f"tvm gemv must be a multiple of 16 from 16 to 240 (columns of fp32 accumulators "
                            f"under 1024 bytes), got {self.gemv!r}: e.g. 64 (NEON) or 128 (AVX2/AVX-512)")


PRECISIONS = (
    FP32,
    Precision("int8", 8, None, INT8, 0.25, QAT_ADVICE,
              "per-channel int8 weights times int8 activations in blocks of 32 (integer dot products: "
              "dot.gemm8_dot on NEON, AVX2, AVX-512 VNNI; elsewhere weight-only, dequantised in the matmul)"),
    # round to nearest in the same layout (the int4-b32 row before) cost SmolLM2-135M +45 %, q4_0 +26 %:
    # dropped, int4 is GPTQ's codes only (docs/quality.md)
    Precision("int4-gptq", 4, 32, INT4, 0.18,
              about="weight-only int4 in blocks of 32 (fp32 scales), the layers' codes chosen by GPTQ on "
                    "train.bin windows (backends/snap.py), the tied head/embedding int8: a 0.5B model in a "
                    "4 GB Pi"),
)


BACKEND = Backend("tvm", "tvm", PRECISIONS, Settings, "tvm", extra="rpi4")
