"""report: bench results -> JSON for machines, Markdown and HTML for people. Writes are atomic."""
from __future__ import annotations

import html
import json
from pathlib import Path

from .files import write_atomic


def _fmt(v, nd=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1e-2 and v else f"{v:,.{nd}f}"
    return str(v)


def rows(r: dict) -> list[tuple[str, str, str]]:
    """(metric, value, how it was obtained) for one bench result."""
    how = r["provenance"]
    p, d, q, par = r["prefill_ms"], r["decode_ms_per_token"], r["qps"], r["parity"]
    pro = r["protocol"]
    e = r["energy"]
    return [
        (f"prefill {pro['prompt_len']} tokens, ms (p50 / p90 / p99)",
         f"{_fmt(p['p50'])} / {_fmt(p['p90'])} / {_fmt(p['p99'])}", f"{how}; {p['n']} samples after {pro['warmup']} warmup"),
        ("single-stream inferences/s", _fmt(r["inferences_per_s"], 1), f"{how}; 1000 / mean prefill ms"),
        ("decode, tokens/s (mean ± std of reps)", f"{_fmt(r['decode_tok_s']['mean'], 1)} ± {_fmt(r['decode_tok_s']['std'], 1)}",
         f"{how}; {pro['gen_len']} tokens with KV cache, {pro['reps']} reps"),
        ("decode, ms/token (p50)", _fmt(d["p50"], 3), how),
        (f"QPS, {q['sessions']} concurrent sessions", _fmt(q["qps"], 1), f"{how}; {q['inferences']} prefills"),
        ("threads: single stream / each QPS session", f"{pro.get('threads') or 'runtime default'} / "
         f"{pro.get('qps_threads_per_session') or 'runtime default'}", f"chosen by {pro.get('chosen_by', 'the runtime')}; "
         f"spin {pro.get('spin')} / {pro.get('qps_spin')}; CPUs {pro.get('affinity')}; 1-min load {pro.get('load_avg_1m')}"),
        ("peak RSS, MB", _fmt(r["peak_rss_mb"], 1), how),
        ("artifact size, MB", _fmt(r["size_mb"], 2), "manifest (sum of file sizes)"),
        ("energy per inference, J", _fmt(e["j_per_inference"], 4), e["how"]),
        ("parity: top-1 vs torch / max abs vs build host", f"{_fmt(par['top1_agreement_vs_torch'], 3)} / {_fmt(par['max_abs_err_vs_host'])}",
         f"{how}; {'ok' if par['ok'] else 'FAILED'}"),
    ]


def verdict_word(ok) -> str:
    return {True: "pass", False: "**FAIL**", None: "not measured"}[ok]


def threads_line(r: dict) -> str:
    """Threads, the CPUs the runner could use, and the CPU model: every figure depends on them."""
    dev, pro = r["device"], r["protocol"]
    aff = dev.get("affinity")
    return (f"Runtime threads: {pro.get('threads') or 'n/a'} ({pro.get('threads_from') or 'not recorded'}); "
            f"CPU affinity: {f'CPUs {aff}' if aff else 'not recorded'} of {dev.get('cores')}; CPU: {dev.get('cpu', '?')}")


def to_markdown(r: dict) -> str:
    m, dev = r["manifest"], r["device"]
    out = [f"## {m['target']} / {m['precision']} ({m['runtime']} {r.get('runtime_version', '')}) — artifact {m['artifact_id']}",
           "", f"Device: {dev.get('cpu', '?')}, {dev.get('cores')} cores, {dev.get('machine')}, {dev.get('os', '')}",
           "", threads_line(r),
           "", "| metric | value | how |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows(r)]
    if r["thresholds"]:
        out += ["", "| threshold | value | limit | verdict |", "|---|---|---|---|"]
        out += [f"| {t['threshold']} | {_fmt(t['value'])} | {t['limit']} | {verdict_word(t['pass'])} {t['note']} |"
                for t in r["thresholds"]]
    out += ["", f"Overall: {'PASS' if r['ok'] else 'FAIL'}"]
    return "\n".join(out) + "\n"


def to_html(r: dict) -> str:
    def table(head, body):
        th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><tr>{th}</tr>{trs}</table>"
    m = r["manifest"]
    thr = [(t["threshold"], _fmt(t["value"]), t["limit"], verdict_word(t["pass"]).strip("*")) for t in r["thresholds"]]
    return ("<!doctype html><meta charset=utf-8><title>litelm-edge bench</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px 8px}table{border-collapse:collapse}</style>"
            f"<h2>{html.escape(m['target'])} / {html.escape(m['precision'])} — {html.escape(m['artifact_id'])}</h2>"
            + f"<p>{html.escape(threads_line(r))}</p>"
            + table(["metric", "value", "how"], rows(r)) + "<h3>Thresholds</h3>"
            + table(["threshold", "value", "limit", "verdict"], thr)
            + f"<p>Overall: <b>{'PASS' if r['ok'] else 'FAIL'}</b></p>")


def write(r: dict, out_dir) -> dict:
    """bench.json (full, with raw samples), bench.md, bench.html in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "html": out / "bench.html"}
    write_atomic(paths["json"], json.dumps(r, indent=1))
    write_atomic(paths["md"], to_markdown(r))
    write_atomic(paths["html"], to_html(r))
    return paths
