"""Quality gates: the verdicts a recipe's [gates] table asks for, per attempt and per target.

    [gates]
    max_ppl_increase = 0.05   # artifact val ppl may exceed the fp32 checkpoint's by at most 5 %
    max_size_mb = 2.0         # any bench threshold key (max_latency_ms, min_qps, ...) works too
    max_attempts = 3          # attempt 0 builds the trained model; attempt k adds [[compress]] step k

The target's own thresholds (targets/*.toml) are gates as well: bench already judges them.
"""
from __future__ import annotations

from ..config import UserError
from ..reports.fmt import sig

PPL_GATE = "max_ppl_increase"


def split(gates: dict) -> tuple[int, float | None, dict]:
    """-> (max_attempts, max_ppl_increase or None, bench-style thresholds)."""
    g = dict(gates)
    attempts = g.pop("max_attempts", 1)
    if not isinstance(attempts, int) or attempts < 1:
        raise UserError(f"[gates] max_attempts must be an integer >= 1, got {attempts!r}")
    return attempts, g.pop(PPL_GATE, None), g


def judge(gates: dict, ref_ppl: float, art_ppl: float, bench_result: dict) -> list[dict]:
    """Rows of {gate, value, limit, pass, note} for one artifact."""
    from ..reports.judge import verdicts
    _, max_inc, thresholds = split(gates)
    rows = []
    if max_inc is not None:
        inc = art_ppl / ref_ppl - 1
        rows.append({"gate": PPL_GATE, "value": inc, "limit": max_inc, "pass": inc <= max_inc,
                     "note": f"artifact ppl {art_ppl:.3f} vs fp32 checkpoint {ref_ppl:.3f}"})
    for t in verdicts(bench_result, thresholds, None) + bench_result["thresholds"]:
        rows.append({"gate": t["threshold"], "value": t["value"], "limit": t["limit"], "pass": t["pass"],
                     "note": t["note"] or "bench"})
    rows.append({"gate": "parity", "value": bench_result["parity"]["top1_agreement_vs_torch"], "limit": "ok",
                 "pass": bool(bench_result["parity"]["ok"]), "note": "on-device parity against torch"})
    return rows


def passed(rows: list[dict]) -> bool:
    return all(r["pass"] is not False for r in rows)


def to_markdown(attempts: list[dict]) -> str:
    """One section per attempt: what was applied, each gate's verdict, the attempt's outcome."""
    out = ["## Quality gates", ""]
    for a in attempts:
        out += [f"### Attempt {a['attempt']}: {a['step']}", "",
                f"Checkpoint {a['checkpoint']}: {a['n_params']:,} params, val ppl (torch fp32) "
                f"{a['ckpt_ppl']:.3f}"
                + (f"; compression took {a['seconds']:.0f} s" if a.get("seconds") is not None else ""), ""]
        for t in a["targets"]:
            built = (f"{t['size_mb']:.2f} MB, artifact val ppl {t['ppl']:.3f}" if t["size_mb"] is not None
                     else "build refused by its parity check")
            out += [f"Target {t['target']}/{t['precision']}: {built}", "",
                    "| gate | value | limit | verdict | note |", "|---|---|---|---|---|"]
            out += [f"| {r['gate']} | {sig(r['value'], 4)} | {r['limit']} | "
                    f"{ {True: 'pass', False: '**FAIL**', None: 'not measured'}[r['pass']]} | {r['note']} |"
                    for r in t["gates"]]
            out.append("")
        out += [f"Attempt {a['attempt']}: {'PASS' if a['ok'] else 'FAIL'}", ""]
    last = attempts[-1]
    out.append(f"**Verdict: {'PASS' if last['ok'] else 'FAIL'}** after {len(attempts)} attempt(s)"
               + ("" if last["ok"] else ": no compression step met every gate"))
    return "\n".join(out) + "\n"
