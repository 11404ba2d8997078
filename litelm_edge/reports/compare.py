"""Side-by-side comparison of many bench results: the fleet report and the CI summary.

An entry is {"name", "result" (a bench.json dict or None), "error" (why there is no result, or a
device-level failure), "skipped" (why it was not run)}. Markdown for a job summary, one
self-contained HTML page (inline SVG plots) for people.
"""
from __future__ import annotations

import html

from .judge import verdict_line
from ..target import DEFAULT_PERCENTILE
from .fmt import num
from .report import Markup, page, table, verdict_cell


def verdict(e: dict) -> str:
    if e.get("skipped"):
        return "skipped"
    if e["result"] is None or e.get("error"):
        return "fail"
    return e["result"].get("verdict") or ("pass" if e["result"]["ok"] else "fail")


def _threshold_summary(res: dict) -> str:
    parts = []
    for t in res["thresholds"]:
        if t["pass"] is False:
            parts.append(f"FAIL {t['threshold']} {num(t['value'])} vs {t['limit']}")
        elif t["pass"] is None:
            parts.append(f"{t['threshold']}: {t['note'].split(' (')[0]}")
        else:
            parts.append(f"pass {t['threshold']}")
    return "; ".join(parts) or "none"


def _cells(e: dict) -> list:
    r = e["result"]
    if r is None:
        why = e.get("skipped") or e.get("error") or ""
        return [e["name"], "", "", verdict(e).upper(), why, "", "", "", "", ""]
    m, pre, pct = r["manifest"], r["prefill_ms"], r.get("latency_percentile", DEFAULT_PERCENTILE)
    return [e["name"], f"{m['target']}/{m['precision']}", r.get("where", "device"), verdict(e).upper(),
            e.get("error") or _threshold_summary(r), f"{num(pre['p50'])} / {num(pre[pct])} ({pct})",
            num(r["decode_tok_s"]["mean"], 1), num(r["size_mb"], 3),
            f"{num(r['energy']['j_per_inference'], 4)} ({r['energy']['how'].split(' (')[0]})",
            num(r["parity"]["top1_agreement_vs_torch"], 3)]


HEAD = ["bench", "target/precision", "where", "verdict", "thresholds", "prefill p50 / basis, ms",
        "decode tok/s", "size MB", "J/inference (how)", "parity top-1"]


def to_markdown(title: str, entries: list[dict]) -> str:
    out = [f"## {title}", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(str(c).replace("|", "/") for c in _cells(e)) + " |" for e in entries]
    counts = {v: sum(verdict(e) == v for e in entries) for v in ("pass", "fail", "not judged", "skipped")}
    out += ["", ", ".join(f"{n} {v}" for v, n in counts.items()) + f" of {len(entries)} benches.",
            "", "`where`: device = the target's own hardware; emulated = qemu (function check, no speed "
            "verdict); host = another machine standing in for the target (no speed verdict); hosted = a shared "
            "CI runner (GitHub-hosted: no speed verdict)."]
    return "\n".join(out) + "\n"


def _threshold_matrix(entries: list[dict]) -> str:
    done = [e for e in entries if e["result"] is not None]
    keys = list(dict.fromkeys(t["threshold"] for e in done for t in e["result"]["thresholds"])) + ["parity"]
    body = []
    for k in keys:
        row = [k]
        for e in done:
            if k == "parity":
                p = e["result"]["parity"]
                row.append(verdict_cell(bool(p["ok"])))
                continue
            t = next((t for t in e["result"]["thresholds"] if t["threshold"] == k), None)
            row.append(Markup("<td>—</td>") if t is None else Markup(
                verdict_cell(t["pass"], t["note"]).replace("</td>", f"<br><small>{html.escape(num(t['value']))} "
                                                                     f"vs {t['limit']}</small></td>")))
        body.append(row)
    return table(["threshold"] + [e["name"] for e in done], body)


def to_html(title: str, entries: list[dict]) -> str:
    from . import plots
    results = [e["result"] for e in entries if e["result"] is not None]
    figs = [plots.compare_metrics(results), plots.compare_latency(results)] if results else []
    rows = [[*_cells(e)[:3], verdict_cell({"pass": True, "fail": False}.get(verdict(e)), verdict(e)),
             *_cells(e)[4:]]
            for e in entries]
    lines = "".join(f"<li>{html.escape(e['name'])}: {html.escape(verdict_line(e['result']))}</li>"
                    for e in entries if e["result"] is not None)
    return page(title, f"<h1>{html.escape(title)}</h1>" + table(HEAD, rows) + f"<ul>{lines}</ul>"
                + "<h2>Thresholds side by side</h2>" + _threshold_matrix(entries)
                + '<h2>Plots</h2><div class="plots">' + "".join(figs) + "</div>"
                + "<p>Grey bars: emulated or host figures, which check function, not the device's speed.</p>")
