"""report: bench results -> JSON for machines, Markdown and HTML for people. Writes are atomic.

bench.html is one self-contained page (inline CSS and SVG plots, no script, no network), so it opens
offline from a CI artifact.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from ..files import write_atomic
from ..target import DEFAULT_PERCENTILE
from .fmt import num
from .judge import build_quality, verdict_line


def rows(r: dict) -> list[tuple[str, str, str]]:
    """(metric, value, how it was obtained) for one bench result."""
    how = r["provenance"]
    p, d, q, par = r["prefill_ms"], r["decode_ms_per_token"], r["qps"], r["parity"]
    pro = r["protocol"]
    e = r["energy"]
    return [
        (f"prefill {pro['prompt_len']} tokens, ms (p50 / p90 / p99)",
         f"{num(p['p50'])} / {num(p['p90'])} / {num(p['p99'])}",
         f"{how}; {p['n']} samples after {pro['warmup']} warmup"),
        ("single-stream inferences/s", num(r["inferences_per_s"], 1), f"{how}; 1000 / mean prefill ms"),
        ("decode, tokens/s (mean ± std of reps)",
         f"{num(r['decode_tok_s']['mean'], 1)} ± {num(r['decode_tok_s']['std'], 1)}",
         f"{how}; {pro['gen_len']} tokens with KV cache, {pro['reps']} reps"),
        ("decode, ms/token (p50)", num(d["p50"], 3), how),
        (f"QPS, {q['sessions']} concurrent sessions", num(q["qps"], 1), f"{how}; {q['inferences']} prefills"),
        ("threads: single stream / each QPS session", f"{pro.get('threads') or 'runtime default'} / "
         f"{pro.get('qps_threads_per_session') or 'runtime default'}",
         f"chosen by {pro.get('chosen_by', 'the runtime')}; "
         f"spin {pro.get('spin')} / {pro.get('qps_spin')}; CPUs {pro.get('affinity')}; 1-min load "
         f"{pro.get('load_avg_1m')}"),
        ("peak RSS, MB", num(r["peak_rss_mb"], 1), how),
        ("artifact size, MB", num(r["size_mb"], 2), "manifest (sum of file sizes)"),
        ("energy per inference, J", num(e["j_per_inference"], 4), e["how"]),
        ("parity: top-1 vs torch / max abs vs build host",
         f"{num(par['top1_agreement_vs_torch'], 3)} / {num(par['max_abs_err_vs_host'])}",
         f"{how}; {'ok' if par['ok'] else 'FAILED'}"),
    ] + quality_rows(r)


def quality_rows(r: dict) -> list[tuple[str, str, str]]:
    """The build's quality gate (perplexity ratio, mean KL, top-1 vs torch), when the manifest has it."""
    q = build_quality(r)
    if q is None:
        return []
    figures, how, ok = q
    return [("build quality: ppl ratio ± se / mean KL / top-1 vs torch fp32", figures,
             f"{how}; {'pass' if ok else 'FAILED'}")]


def verdict_word(ok, note: str = "") -> str:
    """pass / **FAIL** / the reason a threshold was not judged ('not judged: emulated device ...')."""
    return {True: "pass", False: "**FAIL**"}.get(ok) or note or "not measured"


def basis_line(r: dict) -> str:
    pct = r.get("latency_percentile", DEFAULT_PERCENTILE)
    return (f"Latency threshold basis: prefill {pct} (`max_latency_ms` is judged on it). "
            f"Figures from: {r['provenance']}.")


def threads_line(r: dict) -> str:
    """Threads, the CPUs the runner could use, and the CPU model: every figure depends on them."""
    dev, pro = r["device"], r["protocol"]
    aff = dev.get("affinity")
    return (f"Runtime threads: {pro.get('threads') or 'n/a'} ({pro.get('threads_from') or 'not recorded'}); "
            f"CPU affinity: {f'CPUs {aff}' if aff else 'not recorded'} of {dev.get('cores')}; CPU: "
            f"{dev.get('cpu', '?')}")


def to_markdown(r: dict) -> str:
    m, dev = r["manifest"], r["device"]
    out = [f"## {m['target']} / {m['precision']} ({m['runtime']} {r.get('runtime_version', '')}) — artifact {m['artifact_id']}",
           "", f"Device: {dev.get('cpu', '?')}, {dev.get('cores')} cores, {dev.get('machine')}, {dev.get('os', '')}",
           "", threads_line(r),
           "", "| metric | value | how |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows(r)]
    out += ["", basis_line(r)]
    if r["thresholds"]:
        out += ["", "| threshold | value | limit | verdict | how measured |", "|---|---|---|---|---|"]
        out += [f"| {t['threshold']} | {num(t['value'])} | {t['limit']} | {verdict_word(t['pass'], t['note'])} | "
                f"{t.get('how', '')} |" for t in r["thresholds"]]
    out += ["", verdict_line(r)]
    return "\n".join(out) + "\n"


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;color:#222}"
       "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
       "table{border-collapse:collapse;margin:.5em 0}.pass{color:#2e7d32}.fail{color:#c62828;font-weight:bold}"
       ".nj{color:#757575}.plots{display:flex;flex-wrap:wrap;gap:1em}.plots svg{max-width:100%;height:auto}")


def table(head: list[str], body: list) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(c if isinstance(c, Markup) else f"<td>{html.escape(str(c))}</td>" for c in row)
                  + "</tr>" for row in body)
    return f"<table><tr>{th}</tr>{trs}</table>"


class Markup(str):
    """A table cell that is already HTML."""


def verdict_cell(ok, note: str = "") -> Markup:
    cls = {True: "pass", False: "fail"}.get(ok, "nj")
    return Markup(f'<td class="{cls}">{html.escape(verdict_word(ok, note).strip("*"))}</td>')


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><body>{body}</body></html>")


def to_html(r: dict) -> str:
    from . import plots
    m, dev = r["manifest"], r["device"]
    thr = [(t["threshold"], num(t["value"]), t["limit"], verdict_cell(t["pass"], t["note"]), t.get("how", ""))
           for t in r["thresholds"]]
    figs = [plots.prefill_distribution(r), plots.decode_sequence(r), plots.size_by_dtype(r),
            plots.thresholds(r)]
    word = verdict_line(r).removeprefix("Overall: ")
    cls = {"PASS": "pass", "FAIL": "fail"}.get(word, "nj")
    return page(f"litelm-edge bench {m['target']}/{m['precision']}", (
        f"<h1>{html.escape(m['target'])} / {html.escape(m['precision'])} — artifact {html.escape(m['artifact_id'])}</h1>"
        f"<p>Device: {html.escape(str(dev.get('cpu', '?')))}, {dev.get('cores')} cores, {html.escape(str(dev.get('machine')))}"
        f" — {html.escape(r['provenance'])}</p><p>{html.escape(threads_line(r))}</p>"
        f'<p>Overall: <b class="{cls}">{html.escape(word)}</b></p>'
        f"<p>{html.escape(basis_line(r))}</p>"
        + "<h2>Thresholds</h2>" + table(["threshold", "value", "limit", "verdict", "how measured"], thr)
        + '<h2>Plots</h2><div class="plots">' + "".join(f for f in figs if f) + "</div>"
        + "<h2>All figures</h2>" + table(["metric", "value", "how"], rows(r))))


def write(r: dict, out_dir, junit=None) -> dict:
    """bench.json (full, with raw samples), bench.md, bench.html in out_dir; JUnit XML at `junit`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "html": out / "bench.html"}
    write_atomic(paths["json"], json.dumps(r, indent=1))
    write_atomic(paths["md"], to_markdown(r))
    write_atomic(paths["html"], to_html(r))
    if junit:
        from . import junit as J
        paths["junit"] = J.write([J.bench_suite(r, f"{r['manifest']['target']}-{r['manifest']['precision']}")], junit)
    return paths
