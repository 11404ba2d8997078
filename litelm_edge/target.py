"""The schema of a target TOML (targets/*.toml): tables read by config.from_dict, strictly.

    [target]      backend, default precision, description      (TargetInfo)
    [thresholds]  bench verdicts                               (Thresholds)
    [power]       the energy model when the device has no sensor (PowerModel)
    [<section>]   the backend's own keys, checked by its Settings (backends.load_target, which
                  names the section: this module knows no backend)

A misspelt key or table is an error naming the nearest valid one, so a threshold is never silently
dropped and shown as "not measured".
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from .config import UserError, at_least, from_dict, to_dict, unknown_key

# Which prefill statistic max_latency_ms is judged on: here, beside the thresholds it judges
# (reports/judge.py, report.py and compare.py read it from here).
DEFAULT_PERCENTILE = "p99"  # the tail a user meets, not the median
PERCENTILES = ("p50", "p90", "p99", "mean", "max")
DEFAULT_PRECISION = "int8"  # --precision when neither the command nor the target's [target] names one


def latency_percentile(thresholds: dict) -> str:
    """The percentile a [thresholds] table asks for (latency_percentile), else DEFAULT_PERCENTILE."""
    p = thresholds.get("latency_percentile") or DEFAULT_PERCENTILE
    if p not in PERCENTILES:
        raise UserError(f"[thresholds] latency_percentile = {p!r}: use one of {', '.join(PERCENTILES)}")
    return str(p)


@dataclass
class TargetInfo:
    backend: str  # a litelm_edge/backends/<name>/ package: ort, tvm, litert
    precision: str = DEFAULT_PRECISION  # the default --precision
    description: str = ""  # one line for `litelm-edge targets`
    # the device's CPU (platform.machine()); None: any. Figures from another are host or emulated ones
    arch: str | None = None


@dataclass
class Thresholds:
    max_latency_ms: float | None = None  # single inference: prefill of the prompt, at latency_percentile
    min_inferences_per_s: float | None = None  # single stream, 1000 / mean prefill ms
    min_qps: float | None = None  # concurrent sessions
    max_size_mb: float | None = None  # artifact on disk, decimal MB
    min_decode_tok_s: float | None = None  # decode with the KV cache
    min_energy_reduction: float | None = None  # vs the fp32 build's bench.json (bench --baseline)
    latency_percentile: str | None = None  # the percentile max_latency_ms is judged on (DEFAULT_PERCENTILE)

    def validate(self) -> None:
        at_least(self, **{f.name: 0 for f in fields(Thresholds) if f.name != "latency_percentile"})
        latency_percentile({"latency_percentile": self.latency_percentile})


@dataclass
class PowerModel:
    idle_w: float  # W between inferences
    full_load_w: float  # W with every core busy
    name: str = ""  # what the figures describe
    cores: int | None = None  # cores the full-load figure spans (default: the device's count)
    source: str = ""  # where the figures come from (the report quotes it)

    def validate(self) -> None:
        at_least(self, idle_w=0, cores=1)
        if self.full_load_w < self.idle_w:
            raise UserError(f"full_load_w ({self.full_load_w}) must be >= idle_w ({self.idle_w})")


TABLES = {"target": TargetInfo, "thresholds": Thresholds, "power": PowerModel}


def check_tables(raw: dict, where: str, section: str) -> dict:
    """The generic tables of a target TOML, validated, as plain dicts (unset keys left out); the
    backend's `section` is let through for its own check; any other table is an error."""
    out = {}
    for table, value in raw.items():
        if table in TABLES:
            out[table] = to_dict(from_dict(TABLES[table], value, f"{where} [{table}]"))
        elif table != section:
            raise unknown_key(table, [*TABLES, section], where, "table")
    return out
