"""`bench -o json|csv|md`: one row per measurement with build and hardware columns (llama-bench's
convention), printed to stdout so a shell can keep or append them; the full document stays bench.json.

A bench gives three measurements: prefill of the prompt (`pp<prompt_len>`, ms), decode with the KV
cache (`tg<gen_len>`, tokens/s, mean and stddev of the reps) and concurrent prefills (`qps<sessions>`,
inferences/s, one figure). Every row repeats when, by what and where it was made.
"""
from __future__ import annotations

import csv
import io
import json

from ..config import UserError

FORMATS = ("json", "csv", "md")
COLUMNS = ["started_at", "version", "commit", "host", "device_host", "cpu", "cores", "machine", "where",
           "target", "precision", "runtime", "runtime_version", "artifact_id", "size_mb", "threads",
           "test", "unit", "n", "mean", "stddev", "p50", "p99"]


def _build_and_hardware(r: dict) -> dict:
    run, dev, m = r.get("run") or {}, r["device"], r["manifest"]
    return {"started_at": run.get("started_at"), "version": run.get("version"), "commit": run.get("commit"),
            "host": run.get("host"), "device_host": dev.get("hostname"), "cpu": dev.get("cpu"),
            "cores": dev.get("cores"), "machine": dev.get("machine"), "where": r.get("where", "device"),
            "target": m["target"], "precision": m["precision"], "runtime": m.get("runtime"),
            "runtime_version": r.get("runtime_version"), "artifact_id": m["artifact_id"],
            "size_mb": round(r["size_mb"], 4), "threads": r["protocol"].get("threads")}


def rows(r: dict) -> list[dict]:
    """The measurements of one bench result (a bench.json dict)."""
    base, pro = _build_and_hardware(r), r["protocol"]
    pre, dec, q = r["prefill_ms"], r["decode_tok_s"], r["qps"]
    return [
        dict(base, test=f"pp{pro['prompt_len']}", unit="ms", n=pre["n"], mean=pre["mean"], stddev=pre["std"],
             p50=pre["p50"], p99=pre["p99"]),
        dict(base, test=f"tg{pro['gen_len']}", unit="tokens/s", n=dec["n"], mean=dec["mean"],
             stddev=dec["std"], p50=dec["p50"], p99=dec["p99"]),
        dict(base, test=f"qps{q['sessions']}", unit="inferences/s", n=q["inferences"], mean=q["qps"],
             stddev=None, p50=None, p99=None),
    ]


def _md_cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "/")


def render(fmt: str, results: list[dict]) -> str:
    """The rows of every result as json (a list of objects), csv (a header line) or md (a table)."""
    if fmt not in FORMATS:
        raise UserError(f"-o {fmt}: use one of {', '.join(FORMATS)}")
    table = [row for r in results for row in rows(r)]
    if fmt == "json":
        return json.dumps(table, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(table)
        return buf.getvalue().rstrip("\n")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_md_cell(row[c]) for c in COLUMNS) + " |" for row in table]
    return "\n".join(lines)
