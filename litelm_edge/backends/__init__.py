"""Backends: one package each, found by name (`targets/*.toml` [target] backend = "<name>").

    backends/<name>/__init__.py  RUNTIME (the device runtime's name) and PRECISIONS (a table)
    backends/<name>/build.py     build(ctx: BuildContext) -> BackendBuild, on the build host
    backends/<name>/runtime.py   the device side: numpy and the runtime only, uploaded with
                                 the runner core (devices/runner.py), which loads it by path

A package is imported only when a target names it (or the CLI lists precisions). This module
holds what export and every backend share: the precision record, the build result, the lookup.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

from ..config import UserError

FP32_MAX_ABS = 1e-3  # logits, fp32 artifact vs torch


@dataclass(frozen=True)
class Rule:
    """The quality a quantised artifact keeps against torch on the build's held-out windows, in
    llama.cpp's `llama-perplexity --kl-divergence` terms (tools/perplexity/perplexity.cpp)."""
    max_ppl_ratio: float  # PPL(artifact) / PPL(torch), both on the same tokens
    max_mean_kl: float  # mean over tokens of KL(torch || artifact), nats

    def __str__(self) -> str:
        return f"ppl_ratio <= {self.max_ppl_ratio}, mean_kl <= {self.max_mean_kl}"


# Bars for SmolLM2-135M-class models (docs/quality.md): the gate's 16 x 128 held-out tokens give the
# ratio to +-0.25 % (one standard error) at 8 bits and +-3 % at 4 bits, measured there.
INT8 = Rule(1.03, 0.03)  # 8-bit: the bar is +2 % on 32 windows; +1 % for the gate's noise
INT4 = Rule(1.30, 0.35)  # 4-bit: llama.cpp q4_0 on the same weights: ratio 1.258, mean KL 0.311

WIDER = "build a wider --precision (int8 or fp32)"  # the advice of most quantised precisions


@dataclass(frozen=True)
class Precision:
    """One way a backend stores the weights, and the parity rule its artifact must meet."""
    name: str  # what --precision takes
    bits: int  # bits a weight
    block: int | None  # weights sharing one scale along K; None = per channel (or fp32)
    quality: Rule | None  # parity: the quality rule; None = fp32's max-abs rule
    size_ratio: float  # expected weight bytes / fp32 weight bytes, from bits and scale sizes (not measured)
    advice: str = WIDER  # what to do when parity fails ("" = nothing to add)
    about: str = ""  # one line for the docs and the CLI help

    @property
    def rule(self) -> str:
        return f"max_abs_err <= {FP32_MAX_ABS}" if self.quality is None else str(self.quality)

    def passes(self, p: dict) -> bool:
        """p: export.parity()'s figures. Top-1 agreement is reported, never judged: with a large
        vocabulary it counts near-ties flipped, not quality lost (issue 22)."""
        if self.quality is None:
            return p["max_abs_err"] <= FP32_MAX_ABS
        return p["ppl_ratio"] <= self.quality.max_ppl_ratio and p["mean_kl"] <= self.quality.max_mean_kl


FP32 = Precision("fp32", 32, None, None, 1.0, advice="", about="float32 weights: the baseline")
QAT_ADVICE = "fine-tune for int8 with `litelm-edge compress qat`, or build --precision fp32"


@dataclass
class BackendBuild:
    """What a backend's build() hands back to export."""
    runtime: str  # the manifest's "runtime": the device runtime's name
    weight_bytes: dict | None  # {dtype: bytes} of the stored weights, read back from the files written
    tools: tuple[str, ...] = ()  # modules whose versions the manifest records
    extra: dict = field(default_factory=dict)  # backend keys merged into the manifest
    parity_runtime: object = None  # prefill/decode for the host parity check; None = the runner's


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.ispkg)


def load(name: str, part: str = ""):
    """The backend package (its tables), or one of its modules (part="build")."""
    if name not in names():
        raise UserError(f"unknown backend '{name}', have: {', '.join(names())}")
    mod = f"{__name__}.{name}" + (f".{part}" if part else "")
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(__name__):
            raise
        raise UserError(f"backend '{name}' needs {e.name}: pip install 'litelm-edge[<target>]'") from e


def precision(backend: str, name: str) -> Precision:
    table = {p.name: p for p in load(backend).PRECISIONS}
    if name not in table:
        raise UserError(f"unknown precision '{name}' for {load(backend).RUNTIME}, have: {', '.join(table)}")
    return table[name]


def precisions_help() -> str:
    """'fp32, int8, or a backend's own (ort: ...; litert: ...)' from the tables."""
    own = []
    for b in names():
        extra = [p.name for p in load(b).PRECISIONS if p.name not in ("fp32", "int8")]
        if extra:
            own.append(f"{b}: {', '.join(extra)}")
    return f"fp32, int8, or a backend's own ({'; '.join(own)})"


def precisions_markdown() -> str:
    """The precision tables as docs/backends.md prints them (a test keeps the two the same)."""
    rows = ["| backend | precision | bits | block | parity rule | size vs fp32 | when parity fails |",
            "|---|---|---|---|---|---|---|"]
    for b in names():
        for p in load(b).PRECISIONS:
            rows.append(f"| {b} | `{p.name}` | {p.bits} | {p.block or '-'} | {p.rule} | {p.size_ratio:.2f} "
                        f"| {p.advice or '-'} |")
    return "\n".join(rows)
