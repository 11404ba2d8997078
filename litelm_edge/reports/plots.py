"""The reports' figures: matplotlib drawn to inline SVG, so an HTML page needs no network to show them.

Each function takes bench results (bench.json dicts) and returns one `<svg>` element as text.
Text is drawn as paths (svg.fonttype 'path'): no font is fetched or assumed by the browser.
"""
from __future__ import annotations

import io

from ..target import DEFAULT_PERCENTILE

COLORS = {True: "#2e7d32", False: "#c62828", None: "#9e9e9e"}  # pass, fail, not judged / not measured
PCT_STYLE = {"p50": ("#1565c0", "-"), "p90": ("#ef6c00", "--"), "p99": ("#6a1b9a", ":")}


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.fonttype": "path", "svg.hashsalt": "litelm-edge", "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _plt().close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: inline in HTML


def label(r: dict) -> str:
    m = r["manifest"]
    return f"{m['target']}/{m['precision']} ({r.get('where', 'device')})"


def axis_range(samples: list[float], limit: float | None) -> tuple[float, float, bool]:
    """(left, right, limit shown) of a latency axis that fits the samples: the limit widens it only
    when it lies within one span of the data; farther off it is marked at the edge instead (a 100 ms
    limit drawn to scale beside ~1 ms samples leaves an empty plot)."""
    lo, hi = min(samples), max(samples)
    span = (hi - lo) or abs(hi) * 0.1 or 1.0
    left, right = max(0.0, lo - 0.05 * span), hi + 0.05 * span
    if limit is None or not lo - span <= limit <= hi + span:
        return left, right, False
    return max(0.0, min(left, limit - 0.05 * span)), max(right, limit + 0.05 * span), True


def prefill_distribution(r: dict) -> str:
    """Histogram of the prefill samples with p50/p90/p99 marked, on an axis fitting the samples;
    the latency limit is drawn where it falls, or named at the edge it lies beyond."""
    plt = _plt()
    pre = r["prefill_ms"]
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    limit = next((t["limit"] for t in r["thresholds"] if t["threshold"] == "max_latency_ms"), None)
    left, right, shown = axis_range(pre["samples"], limit)
    ax.hist(pre["samples"], bins=min(30, max(5, len(pre["samples"]) // 2)), color="#90caf9",
            edgecolor="white")
    for p, (color, style) in PCT_STYLE.items():
        ax.axvline(pre[p], color=color, linestyle=style, label=f"{p} {pre[p]:.3g} ms")
    ax.set_xlim(left, right)
    if limit is not None:
        text = f"limit {limit:g} ms ({r.get('latency_percentile', DEFAULT_PERCENTILE)})"
        if shown:
            ax.axvline(limit, color="#c62828", linewidth=2, label=text)
        else:  # off the axis: an arrow at the edge it lies beyond, with its distance in p99s
            right_side = limit > right
            ax.annotate(f"{text}, off the axis: {limit / pre[DEFAULT_PERCENTILE]:.3g}× the p99 " + ("→" if right_side else "←"),
                        xy=(1.0 if right_side else 0.0, 0.97), xycoords="axes fraction", color="#c62828",
                        ha="right" if right_side else "left", va="top", fontsize=8)
    ax.set(xlabel="prefill latency, ms", ylabel="samples",
           title=f"Prefill of {r['protocol']['prompt_len']} tokens: {pre['n']} samples "
                 f"({r.get('where', 'device')})")
    ax.legend(frameon=False, fontsize=8, loc="center right")
    return _svg(fig)


def decode_sequence(r: dict) -> str:
    """ms per token at each position of the generated sequence: one thin line per rep, the mean bold."""
    import numpy as np
    plt = _plt()
    gen = r["protocol"]["gen_len"]
    s = np.asarray(r["decode_ms_per_token"]["samples"], float)
    reps = s[: len(s) // gen * gen].reshape(-1, gen)
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    pos = np.arange(1, gen + 1)
    for rep in reps:
        ax.plot(pos, rep, color="#b0bec5", linewidth=0.8)
    ax.plot(pos, reps.mean(0), color="#1565c0", linewidth=1.8, label=f"mean of {len(reps)} reps")
    ax.set(xlabel="generated token (position after the prompt)", ylabel="ms / token", ylim=(0, None),
           title="Decode with KV cache, ms per token across the sequence")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def size_by_dtype(r: dict) -> str:
    """The artifact's bytes: weights per dtype (read back from the built graph) and everything else."""
    plt = _plt()
    m = r["manifest"]
    parts = {k: v / 1e6 for k, v in sorted((m.get("weight_bytes") or {}).items())}
    parts["other (graph, code, tokenizer)"] = max(0.0, m["size_bytes"] / 1e6 - sum(parts.values()))
    fig, ax = plt.subplots(figsize=(6.4, 0.6 + 0.35 * len(parts)))
    bars = ax.barh(list(parts), list(parts.values()), color="#80cbc4")
    ax.bar_label(bars, labels=[f"{v:.3f} MB" for v in parts.values()], fontsize=8, padding=3)
    ax.invert_yaxis()
    ax.set(xlabel="MB (decimal)", title=f"Artifact size by dtype: {m['size_bytes'] / 1e6:.3f} MB in all")
    return _svg(fig)


def thresholds(r: dict) -> str | None:
    """Each threshold as its value against its limit; colour = verdict. None when the target has none."""
    rows = r["thresholds"]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(6.4, 0.9 * len(rows) + 0.3), squeeze=False)
    for ax, t in zip(axes[:, 0], rows, strict=True):
        v = t["value"]
        if v is not None:
            ax.barh([0], [v], color=COLORS[t["pass"]], height=0.5)
        ax.axvline(t["limit"], color="black", linewidth=1.5)
        ax.set_xlim(0, max(t["limit"], v or 0) * 1.25 or 1)
        ax.set_yticks([])
        word = {True: "pass", False: "FAIL", None: t["note"].split(":")[0] or "not judged"}[t["pass"]]
        shown = "n/a" if v is None else f"{v:.4g}"
        ax.set_title(f"{t['threshold']}: {shown} vs limit {t['limit']:g} ({word})", fontsize=8, loc="left")
    fig.tight_layout()
    return _svg(fig)


def compare_metrics(results: list[dict]) -> str:
    """Devices and precisions side by side: prefill p50/p99, decode tok/s, size, one panel each.
    Bars are linear from zero (a log axis makes 2x look like 20x), each labelled with its value, so a
    row dwarfed by an emulated one (~1000x slower) still reads."""
    plt = _plt()
    names = [label(r) for r in results]
    panels = [("prefill p50 (bar) / p99 (|), ms", [r["prefill_ms"]["p50"] for r in results],
               [r["prefill_ms"]["p99"] for r in results]),
              ("decode, tokens/s", [r["decode_tok_s"]["mean"] for r in results], None),
              ("artifact size, MB", [r["size_mb"] for r in results], None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(10, 0.8 + 0.45 * len(results)), sharey=True)
    colors = ["#9e9e9e" if r.get("where") != "device" else "#42a5f5" for r in results]
    for ax, (title, vals, extra) in zip(axes, panels, strict=True):
        bars = ax.barh(names, vals, color=colors)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in vals], fontsize=7, padding=2)
        if extra:
            ax.scatter(extra, names, marker="|", s=200, color="#6a1b9a", zorder=3)
        ax.set_xlim(0, max([*vals, *(extra or [])]) * 1.25 or 1)
        ax.set_title(title, fontsize=9)
    axes[0].invert_yaxis()
    fig.suptitle("Grey bars: emulated or host figures (function checks, not the device's speed)", fontsize=8,
                 y=0.02)
    fig.tight_layout()
    return _svg(fig)


def compare_latency(results: list[dict]) -> str:
    """Prefill latency distributions side by side (box: p25-p75, whiskers: 5th-95th percentile)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.8 + 0.45 * len(results)))
    ax.boxplot([r["prefill_ms"]["samples"] for r in results], orientation="horizontal", whis=(5, 95),
               showfliers=True, tick_labels=[label(r) for r in results])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set(xlabel="prefill latency, ms (log scale)",
           title="Prefill latency distribution per device and precision")
    return _svg(fig)
