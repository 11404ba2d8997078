"""The schema of a recipe (recipes/*.toml), read by config.from_dict and checked whole before the
first step runs: every table's keys, the data and train overrides, the model preset, the targets
and their build settings, the gates and the compression steps. A recipe that cannot finish fails
in a second, not after training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import UserError, at_least, from_dict, named_toml, unknown_key
from ..devices.runner import Protocol
from ..target import Thresholds


@dataclass
class RecipeInfo:
    name: str = ""  # the report's title (default: the file's name)
    workdir: str = ""  # where every step's output goes (default: runs/<file name>), relative to the cwd


@dataclass
class DataStep:
    # files/folders; "default" = bundled corpus
    inputs: list[str] = field(default_factory=lambda: ["default"])
    vocab: int = 4096  # tokenizer size when one is trained
    tokenizer: str | None = None  # an existing tokenizer.json instead
    set: dict = field(default_factory=dict)  # DataConfig overrides

    def validate(self):
        at_least(self, vocab=256)
        if not self.inputs:
            raise UserError("'inputs' must name at least one file or folder (or \"default\")")


@dataclass
class TrainStep:
    preset: str = "tiny"  # model/NAME.toml
    set: dict = field(default_factory=dict)  # TrainConfig and model.* overrides


@dataclass
class BuildStep:
    targets: list[str]  # targets/NAME.toml, each built and benched
    precision: str | None = None  # default: each target's own

    def validate(self):
        if not self.targets:
            raise UserError("'targets' must name at least one target")


@dataclass
class BenchStep:
    """A recipe's [bench] table: the runner's Protocol, whose defaults (and comments) are the owners."""
    reps: int = Protocol.reps
    warmup: int = Protocol.warmup
    prompt_len: int = Protocol.prompt_len
    gen_len: int = Protocol.gen_len
    concurrency: int = Protocol.concurrency
    threads: int | None = Protocol.threads
    iters: int = Protocol.iters
    qps_iters: int = Protocol.qps_iters

    def validate(self):
        at_least(self, reps=1, warmup=0, prompt_len=1, gen_len=1, concurrency=1, threads=1, iters=1,
                 qps_iters=1)


@dataclass
class Gates(Thresholds):
    # artifact val ppl vs the fp32 checkpoint's, relative (< 0: must improve)
    max_ppl_increase: float | None = None
    max_attempts: int = 1  # attempt 0 builds the trained model; attempt k adds [[compress]] step k

    def validate(self):
        super().validate()
        at_least(self, max_attempts=1)


@dataclass
class CompressStep:
    method: str  # qat, prune, distill, share
    set: dict = field(default_factory=dict)  # the method's keys and train.* / model.*
    # base: the trained model; previous: the last attempt
    from_: str = field(default="base", metadata={"key": "from"})

    def validate(self):
        from ..pipeline.compress import METHODS
        if self.method not in METHODS:
            raise unknown_key(self.method, METHODS, "[[compress]] method", "method")
        if self.from_ not in ("base", "previous"):
            raise UserError(f"'from' must be \"base\" or \"previous\", got {self.from_!r}")


@dataclass
class Recipe:
    recipe: RecipeInfo
    data: DataStep
    train: TrainStep
    build: BuildStep
    bench: BenchStep = field(default_factory=BenchStep)
    gates: Gates = field(default_factory=Gates)
    compress: list[CompressStep] = field(default_factory=list)


def apply_sets(raw: dict, sets: dict) -> dict:
    """--set train.max_steps=100 / data.vocab=2048 / recipe.workdir=x edit the recipe's tables;
    train.KEY and data.KEY that are not the step's own keys go to its `set` table."""
    own = {"train": {"preset", "set"}, "data": {"inputs", "vocab", "tokenizer", "set"}}
    tables = {f for f in Recipe.__dataclass_fields__ if f != "compress"}
    for key, value in sets.items():
        table, _, name = key.partition(".")
        if table not in tables or not name:
            raise unknown_key(key, [f"{t}.KEY" for t in sorted(tables)], "--set (recipe)")
        t = raw.setdefault(table, {})
        if table in own and name not in own[table]:
            t.setdefault("set", {})[name] = value
        else:
            t[name] = value
    return raw


def check(r: Recipe, where: str):
    """What each step will ask of its inputs, asked now: overrides, preset, targets, build settings."""
    from ..config import override, split_sets
    from ..backends import load_target, precision
    from ..pipeline.compress import check_sets
    from ..pipeline.data import DataConfig
    from ..pipeline.model import preset
    from ..pipeline.train import TrainConfig
    override(DataConfig(), r.data.set, f"{where} [data] set")
    model_sets, rest = split_sets(dict(r.train.set), "model")
    override(TrainConfig(), rest, f"{where} [train.set]")
    preset(r.train.preset, model_sets)
    for t in r.build.targets:
        _, tgt = load_target(t)
        if r.build.precision:
            precision(tgt["target"]["backend"], r.build.precision)
    for i, step in enumerate(r.compress):
        check_sets(step.method, step.set, f"{where} [[compress]] #{i + 1} set")


def load_recipe(name: str, sets: dict | None = None) -> tuple[Path, Recipe]:
    """recipes/NAME.toml (or a path) with --set applied, parsed and checked whole."""
    path, raw = named_toml("recipes", name)
    where = str(path)
    for table in ("recipe", "data", "train", "build"):
        if table not in raw:
            raise UserError(f"{where}: recipe needs a [{table}] table")
    r = from_dict(Recipe, apply_sets(raw, sets or {}), where)
    check(r, where)
    return path, r
