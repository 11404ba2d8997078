"""`litelm-edge compare A B ...`: bench runs over time, each against the first, with their spread.

The conventions of hyperfine and llama-bench's compare script: every figure is mean ± stddev of its
samples, and a ratio to the baseline carries its propagated uncertainty,
    r = b / a,   sigma_r = r * sqrt((sigma_a / a)^2 + (sigma_b / b)^2)
A difference smaller than the two spreads together (|b - a| < sqrt(sigma_a^2 + sigma_b^2)) is said
to be within the spread: not a change these samples can show. Runs measured in different places
(device, emulated, host) or with different protocols are compared, and the differences are named.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

from ..config import UserError

SCHEMAS = ("litelm-edge-bench/2", "litelm-edge-bench/3")  # /2 has no `run` record: when is unknown
# (label, how to read the mean and stddev from a bench.json, True when lower is better)
METRICS = [
    ("prefill, ms", lambda r: (r["prefill_ms"]["mean"], r["prefill_ms"]["std"]), True),
    ("decode, tokens/s", lambda r: (r["decode_tok_s"]["mean"], r["decode_tok_s"]["std"]), False),
    ("decode, ms/token", lambda r: (r["decode_ms_per_token"]["mean"], r["decode_ms_per_token"]["std"]), True),
    ("QPS, inferences/s", lambda r: (r["qps"]["qps"], None), False),
    ("peak RSS, MB", lambda r: (r["peak_rss_mb"], None), True),
    ("artifact size, MB", lambda r: (r["size_mb"], None), True),
]
PROTOCOL_KEYS = ("prompt_len", "gen_len", "concurrency", "reps", "warmup", "threads")


def find(paths: list) -> list[Path]:
    """bench.json files: each path is one, or a folder searched for them (sorted by path)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(p.rglob("bench.json"))
            if not inside:
                raise UserError(f"{p}: no bench.json in this folder: pass bench.json files or the "
                                "folders `litelm-edge bench --report-dir` wrote")
            found += inside
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"{p}: no such file or folder: pass bench.json files or folders holding them")
    if len(found) < 2:
        raise UserError(f"compare needs two runs or more, got {len(found)}: pass another bench.json")
    return found


def load(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not JSON ({e}): pass the bench.json that `litelm-edge bench` wrote") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema not in SCHEMAS:
        raise UserError(f"{path}: schema {schema!r} is not a bench result ({', '.join(SCHEMAS)}): pass a "
                        "bench.json (a fleet.json holds one result per device under devices[].result)")
    return doc


def ratio(a: float, sa: float | None, b: float, sb: float | None) -> tuple[float | None, float | None]:
    """b / a and its uncertainty (None where a figure has no spread)."""
    if not a:
        return None, None
    r = b / a
    if sa is None or sb is None or not b:
        return r, None
    return r, abs(r) * math.sqrt((sa / a) ** 2 + (sb / b) ** 2)


def _pm(mean, std) -> str:
    return f"{mean:.4g}" + (f" ± {std:.2g}" if std is not None else "")


def _ratio_cell(a, sa, b, sb, lower_better: bool) -> str:
    r, sr = ratio(a, sa, b, sb)
    if r is None:
        return "n/a"
    text = f"{r:.3f}" + (f" ± {sr:.3f}" if sr is not None else "")
    if r == 1:
        return text + " (same)"
    if sa is None or sb is None:  # one figure each: no spread to tell a change from noise
        return text
    if abs(b - a) < math.hypot(sa, sb):
        return text + " (within spread)"
    return text + (" (better)" if (r < 1) == lower_better else " (worse)")


def describe(i: int, path: Path, r: dict) -> str:
    run, m = r.get("run") or {}, r["manifest"]
    commit = (run.get("commit") or "no commit")[:12] + ("-dirty" if (run.get("commit") or "").endswith("-dirty") else "")
    return (f"{chr(65 + i) if i < 26 else i}: {m['target']}/{m['precision']} @ {r.get('where', 'device')}, "
            f"{run.get('started_at') or 'started_at unknown (bench/2)'}, litelm-edge {run.get('version', '?')} "
            f"({commit}), host {run.get('host', '?')}, device {r['device'].get('hostname') or r['device'].get('cpu')} "
            f"— {path}")


def caveats(runs: list[dict]) -> list[str]:
    """What differs between the runs beside the figures: each makes the comparison weaker."""
    out = []
    wheres = {r.get("where", "device") for r in runs}
    if len(wheres) > 1:
        out.append(f"runs measured in different places ({', '.join(sorted(wheres))}): emulated and host "
                   "figures check function, not the device's speed")
    for k in PROTOCOL_KEYS:
        vals = [r["protocol"].get(k) for r in runs]
        if len(set(map(str, vals))) > 1:
            out.append(f"protocol differs: {k} = {', '.join(map(str, vals))}")
    if len({r["device"].get("cpu") for r in runs}) > 1:
        out.append("different CPUs: " + ", ".join(str(r["device"].get("cpu")) for r in runs))
    return out


def to_markdown(paths: list[Path], runs: list[dict]) -> str:
    names = [chr(65 + i) if i < 26 else str(i) for i in range(len(runs))]
    out = [f"## compare: {len(runs)} bench runs, each against A", ""]
    out += [f"- {describe(i, p, r)}" for i, (p, r) in enumerate(zip(paths, runs, strict=True))]
    out += ["", "| metric | " + " | ".join(f"{n} (mean ± stddev)" for n in names) + " | "
            + " | ".join(f"{n} / A" for n in names[1:]) + " |", "|---" * (2 * len(runs)) + "|"]
    for label, get, lower in METRICS:
        vals = [get(r) for r in runs]
        cells = [_pm(*v) for v in vals] + [_ratio_cell(*vals[0], *v, lower) for v in vals[1:]]
        out.append(f"| {label} ({'lower' if lower else 'higher'} is better) | " + " | ".join(cells) + " |")
    out += ["", "Ratio uncertainty: r·sqrt((σa/a)² + (σb/b)²) (hyperfine's); within spread: |b − a| < "
            "sqrt(σa² + σb²). Figures without a spread (QPS, RSS, size) are single measurements."]
    out += [f"Note: {c}." for c in caveats(runs)]
    return "\n".join(out) + "\n"


def plot(runs: list[dict], path: Path) -> Path:
    """One panel per metric: bars from zero (linear) at the mean, stddev as error bars."""
    from ..files import write_atomic
    from .plots import _plt
    plt = _plt()
    names = [chr(65 + i) if i < 26 else str(i) for i in range(len(runs))]
    colors = ["#42a5f5" if r.get("where", "device") == "device" else "#9e9e9e" for r in runs]
    fig, axes = plt.subplots(2, 3, figsize=(10, 5.2))
    for ax, (label, get, lower) in zip(axes.flat, METRICS, strict=False):
        vals = [get(r) for r in runs]
        spread = [v[1] for v in vals]
        bars = ax.bar(names, [v[0] for v in vals], color=colors, capsize=4,
                      yerr=None if None in spread else spread)  # single figures (QPS, RSS, size): no bar
        ax.bar_label(bars, labels=[f"{v[0]:.3g}" for v in vals], fontsize=7, label_type="center")
        ax.set_ylim(0, None)
        ax.set_title(f"{label}\n({'lower' if lower else 'higher'} is better)", fontsize=9)
    fig.suptitle("Bench runs compared: mean ± stddev (grey: emulated or host figures)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return path


def compare(paths: list, plot_path=None) -> str:
    """Markdown comparing the bench runs (files or folders of bench.json); the plot written at plot_path."""
    files = find(paths)
    runs = [load(p) for p in files]
    text = to_markdown(files, runs)
    if plot_path:
        p = Path(plot_path)
        if p.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise UserError(f"--plot {p}: use a .png, .svg or .pdf file name")
        text += f"\nplot -> {plot(runs, p)}\n"
    return text
