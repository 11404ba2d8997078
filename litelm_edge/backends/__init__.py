"""Backends: one package each, found by name (`targets/*.toml` [target] backend = "<name>").

The contract, typed here (the framework side) so that every backend reads one context and
returns one result:

    backends/<name>/__init__.py  BACKEND = Backend(name, runtime, precisions, settings, section,
                                 extra, host_modules): its tables, no heavy import
    backends/<name>/build.py     build(ctx: BuildContext) -> BackendBuild, on the build host
    backends/<name>/runtime.py   the device side: numpy and the runtime only, uploaded with the
                                 runner core (devices/runner.py), which loads it by path. It
                                 exposes PACKAGES, MODULE, Runtime (with `spins`) and
                                 default_threads(manifest): the threads the build asks for

Settings are resolved once, by `resolve`: the backend's Settings dataclass defaults, then the
target TOML's [section] table, then `--set KEY=VALUE` (KEY, SECTION.KEY and build.KEY name the
same key). The build gets them typed as ctx.settings, and the build flow writes them under
manifest[section], where the device side reads them (default_threads).

A package is imported only when a target names it (or the CLI lists precisions).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from collections.abc import Callable

from ..config import UserError, from_dict, named_toml, override, to_dict
from ..target import check_tables

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
    options: tuple[str, ...] = ()  # the backend's own build options, KEY=VALUE (ort: onnxruntime-genai
    #   builder --extra_options); the manifest records them, and a graph that cannot honour them refuses

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


@dataclass(frozen=True)
class Backend:
    """What a backend is, as data: the build flow, the CLI and the target loader read only this."""
    name: str  # the package under backends/, what a target's [target] backend names
    runtime: str  # the device runtime's name (the manifest's "runtime")
    precisions: tuple[Precision, ...]  # the first is fp32; what --precision takes
    settings: type[Any]  # a dataclass of the build's keys, each with a commented default
    section: str  # the target TOML's table of those keys, and the manifest's key they land under
    extra: str | None = None  # the pyproject extra that installs what the build imports; None: base
    host_modules: tuple[str, ...] = ()  # modules of that extra (a missing one names the extra)

    def module(self, part: str) -> ModuleType:
        """One of the package's modules (part="build"), with a one-line error when its extra is missing."""
        try:
            return importlib.import_module(f"{__name__}.{self.name}.{part}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(__name__):
                raise
            raise UserError(f"backend '{self.name}' needs {e.name}: pip install "
                            f"'litelm-edge[{self.extra or '<target>'}]'") from e

    def precision(self, name: str) -> Precision:
        table = {p.name: p for p in self.precisions}
        if name not in table:
            raise UserError(f"unknown precision '{name}' for {self.runtime}, have: {', '.join(table)}")
        return table[name]


@dataclass(kw_only=True)  # keyword-only: a Settings' own fields keep their positions
class GptqSettings:
    """The calibration keys of a backend whose INT4 precisions run backends/snap.py (litert: every INT4;
    ort, tvm: int4-gptq): their Settings inherit these and call `at_least(self, gptq_windows=1,
    gptq_len=1)` in validate."""
    gptq_windows: int = 64  # token windows of the data folder's train.bin (never val.bin: the gate's)
    gptq_len: int = 128  # tokens a window (64 x 128: 8,192 tokens; SmolLM2-135M: 7 min on 2 cores)
    gptq_act_order: bool = True  # columns by decreasing input energy, static group scales
    #   (SmolLM2-135M through the android gate: ratio 1.049, KL 0.131; in column order 1.128, 0.176)


@dataclass
class BuildContext:
    """What a backend's build() reads: one typed context (the build flow fills it)."""
    model: Any  # litelm_edge.pipeline.model.Transformer, eval, fp32
    checkpoint: Path
    target: dict  # the whole target TOML, validated (thresholds, power, the backend's section)
    out_dir: Path  # temporary folder, renamed into place after the checks
    precision: str
    heldout: list  # np.int64 arrays of held-out token ids (parity, calibration)
    settings: Any = None  # the backend's Settings, resolved (defaults <- [section] <- --set)
    log: Callable[[str], None] = print
    tokenizer_json: str = ""  # the checkpoint's tokenizer (a backend's exporter may read it)
    data_dir: Path | None = None  # the data folder (train.bin: a precision's own calibration text)


@dataclass
class BackendBuild:
    """What a backend's build() hands back to the build flow."""
    weight_bytes: dict | None  # {dtype: bytes} of the stored weights, read back from the files written
    tools: tuple[str, ...] = ()  # modules whose versions the manifest records
    extra: dict = field(default_factory=dict)  # backend keys merged into the manifest's top level
    section: dict = field(default_factory=dict)  # what the build derived from its settings (the
    #   effective values, what the runtime reads): merged over them under manifest[section]
    parity_runtime: object = None  # prefill/decode for the host parity check; None = the runner's


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.ispkg)


def load(name: str) -> Backend:
    """The backend's record (backends/<name>/__init__.py BACKEND)."""
    if name not in names():
        raise UserError(f"unknown backend '{name}', have: {', '.join(names())}")
    b = importlib.import_module(f"{__name__}.{name}").BACKEND
    assert isinstance(b, Backend) and b.name == name, f"backends/{name}: BACKEND must be Backend('{name}')"
    return b


def precision(backend: str, name: str) -> Precision:
    return load(backend).precision(name)


def load_target(name: str) -> tuple[str, dict]:
    """targets/NAME.toml (or a path) -> (its name, its tables validated as plain dicts, unset keys
    left out): the generic tables by target.py, the backend's own [section] by its Settings."""
    path, raw = named_toml("targets", name)
    where = str(path)
    if not isinstance(raw.get("target"), dict) or "backend" not in raw["target"]:
        raise UserError(f"{where}: [target] needs 'backend' (one of: {', '.join(names())})")
    b = load(str(raw["target"]["backend"]))
    out = check_tables(raw, where, b.section)
    if b.section in raw:
        out[b.section] = to_dict(from_dict(b.settings, raw[b.section], f"{where} [{b.section}]"))
    b.precision(out["target"]["precision"])  # the default --precision is one the backend has
    return path.stem, out


def resolve(backend: Backend, section: dict | None, sets: dict | None = None) -> Any:
    """The backend's Settings: defaults <- the target's [section] table <- --set. A --set KEY may
    be written KEY, SECTION.KEY or build.KEY; unknown keys and ill-typed values are errors."""
    s = from_dict(backend.settings, section or {}, f"the target's [{backend.section}]")
    plain = {}
    for k, v in (sets or {}).items():
        head, dot, rest = k.partition(".")
        plain[rest if dot and head in ("build", backend.section) else k] = v
    return override(s, plain, f"--set for the {backend.name} backend ([{backend.section}])")


def settings_table(settings: Any) -> dict:
    """Settings as the manifest stores them (a JSON table; unset keys kept as null)."""
    return asdict(settings)


def precisions_help() -> str:
    """'fp32, or a backend's own (gguf: q8_0, ...; ort: int8, ...)' from the tables: what every
    backend has first (fp32), then each one's own names (llama.cpp's q8_0, ORT's int8, ...)."""
    tables = {b: [p.name for p in load(b).precisions] for b in names()}
    common = [n for n in tables[names()[0]] if all(n in t for t in tables.values())]
    own = [f"{b}: {', '.join(n for n in t if n not in common)}" for b, t in tables.items()
           if len(t) > len(common)]
    return f"{', '.join(common)}, or a backend's own ({'; '.join(own)})"


def precisions_markdown() -> str:
    """The precision tables as docs/backends.md prints them (a test keeps the two the same)."""
    rows = ["| backend | precision | bits | block | parity rule | size vs fp32 | when parity fails |",
            "|---|---|---|---|---|---|---|"]
    for b in names():
        for p in load(b).precisions:
            rows.append(f"| {b} | `{p.name}` | {p.bits} | {p.block or '-'} | {p.rule} | {p.size_ratio:.2f} "
                        f"| {p.advice or '-'} |")
    return "\n".join(rows)
