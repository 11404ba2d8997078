"""The schema of a target TOML (targets/*.toml): tables read by config.from_dict, strictly.

    [target]      backend, default precision, description      (TargetInfo)
    [thresholds]  bench verdicts                               (Thresholds)
    [power]       the energy model when the device has no sensor (PowerModel)
    [<backend>]   the backend's own keys: backends/<name>/__init__.py exposes SECTION (the table
                  name) and Settings (a dataclass with defaults); nothing here knows which exist.

A misspelt key or table is an error naming the nearest valid one, so a threshold is never silently
dropped and shown as "not measured".
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from .config import UserError, at_least, from_dict, named_toml, override, to_dict, unknown_key


@dataclass
class TargetInfo:
    backend: str  # a litelm_edge/backends/<name>/ package: ort, tvm, litert
    precision: str = "int8"  # the default --precision
    description: str = ""  # one line for `litelm-edge targets`
    arch: str | None = None  # the device's CPU (platform.machine()); None: any. Figures from another are host or emulated ones


@dataclass
class Thresholds:
    max_latency_ms: float | None = None  # single inference: prefill of the prompt, at latency_percentile
    min_inferences_per_s: float | None = None  # single stream, 1000 / mean prefill ms
    min_qps: float | None = None  # concurrent sessions
    max_size_mb: float | None = None  # artifact on disk, decimal MB
    min_decode_tok_s: float | None = None  # decode with the KV cache
    min_energy_reduction: float | None = None  # vs the fp32 build's bench.json (bench --baseline)
    latency_percentile: str | None = None  # the prefill percentile max_latency_ms is judged on (judge.py; default p99)

    def validate(self):
        from .reports.judge import latency_percentile
        at_least(self, **{f.name: 0 for f in fields(Thresholds) if f.name != "latency_percentile"})
        latency_percentile({"latency_percentile": self.latency_percentile} if self.latency_percentile else {})


@dataclass
class PowerModel:
    idle_w: float  # W between inferences
    full_load_w: float  # W with every core busy
    name: str = ""  # what the figures describe
    cores: int | None = None  # cores the full-load figure spans (default: the device's count)
    source: str = ""  # where the figures come from (the report quotes it)

    def validate(self):
        at_least(self, idle_w=0, cores=1)
        if self.full_load_w < self.idle_w:
            raise UserError(f"full_load_w ({self.full_load_w}) must be >= idle_w ({self.idle_w})")


TABLES = {"target": TargetInfo, "thresholds": Thresholds, "power": PowerModel}


def precision(backend: str, name: str):
    from . import backends
    return backends.precision(backend, name)


def backend_module(name: str):
    """The backend package: its tables (RUNTIME, PRECISIONS, SECTION, Settings), no heavy import."""
    from . import backends
    return backends.load(name)


def load_target(name: str) -> tuple[str, dict]:
    """-> (target name, its validated tables as plain dicts, unset keys left out)."""
    path, raw = named_toml("targets", name)
    where = str(path)
    if not isinstance(raw.get("target"), dict) or "backend" not in raw["target"]:
        from .backends import names
        raise UserError(f"{where}: [target] needs 'backend' (one of: {', '.join(names())})")
    info = from_dict(TargetInfo, raw["target"], f"{where} [target]")
    backend = backend_module(info.backend)
    precision(info.backend, info.precision)  # the default --precision is one the backend has
    section = getattr(backend, "SECTION", None)
    out = {}
    for table, value in raw.items():
        if table in TABLES:
            out[table] = to_dict(from_dict(TABLES[table], value, f"{where} [{table}]"))
        elif table == section:
            out[table] = to_dict(from_dict(backend.Settings, value, f"{where} [{table}]"))
        else:
            raise unknown_key(table, [*TABLES, *([section] if section else [])], where, "table")
    return path.stem, out


def backend_sets(backend_name: str, sets: dict) -> dict:
    """--set KEY=VALUE of `build`, checked against the backend's Settings: KEY, SECTION.KEY and
    build.KEY all name the same key. Returns {KEY: typed value}; unknown keys are errors."""
    backend = backend_module(backend_name)
    section = getattr(backend, "SECTION", None)
    plain = {}
    for k, v in sets.items():
        head, dot, rest = k.partition(".")
        plain[rest if dot and head in ("build", section) else k] = v
    if not plain:
        return {}
    if section is None:
        raise UserError(f"the {backend_name} backend has no build settings, got --set {', '.join(sets)}: remove it")
    s = override(backend.Settings(), plain, f"--set for the {backend_name} backend ([{section}])")
    return {k: getattr(s, k) for k in plain}
