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
INT8_MIN_TOP1 = 0.95  # next-token agreement with torch on held-out windows
INT4_MIN_TOP1 = 0.90  # INT4 blocks: flips more near-ties; judged by perplexity too

WIDER = "build a wider --precision (int8 or fp32)"  # the advice of most quantised precisions


@dataclass(frozen=True)
class Precision:
    """One way a backend stores the weights, and the parity rule its artifact must meet."""
    name: str  # what --precision takes
    bits: int  # bits a weight
    block: int | None  # weights sharing one scale along K; None = per channel (or fp32)
    min_top1: float | None  # parity: top-1 agreement with torch >= this; None = the max-abs rule
    size_ratio: float  # expected weight bytes / fp32 weight bytes, from bits and scale sizes (not measured)
    advice: str = WIDER  # what to do when parity fails ("" = nothing to add)
    about: str = ""  # one line for the docs and the CLI help

    @property
    def rule(self) -> str:
        return f"max_abs_err <= {FP32_MAX_ABS}" if self.min_top1 is None else f"top1_agreement >= {self.min_top1}"

    def passes(self, max_abs_err: float, top1: float) -> bool:
        return max_abs_err <= FP32_MAX_ABS if self.min_top1 is None else top1 >= self.min_top1


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
    """'fp32, or a backend's own (gguf: q8_0, ...; ort: int8, ...)' from the tables: what every
    backend has first (fp32), then each one's own names (llama.cpp's q8_0, ORT's int8, ...)."""
    tables = {b: [p.name for p in load(b).PRECISIONS] for b in names()}
    common = [n for n in tables[names()[0]] if all(n in t for t in tables.values())]
    own = [f"{b}: {', '.join(n for n in t if n not in common)}" for b, t in tables.items() if len(t) > len(common)]
    return f"{', '.join(common)}, or a backend's own ({'; '.join(own)})"


def precisions_markdown() -> str:
    """The precision tables as docs/backends.md prints them (a test keeps the two the same)."""
    rows = ["| backend | precision | bits | block | parity rule | size vs fp32 | when parity fails |",
            "|---|---|---|---|---|---|---|"]
    for b in names():
        for p in load(b).PRECISIONS:
            rows.append(f"| {b} | `{p.name}` | {p.bits} | {p.block or '-'} | {p.rule} | {p.size_ratio:.2f} "
                        f"| {p.advice or '-'} |")
    return "\n".join(rows)
