"""data-report.md and meta.json's `stages`: documents and bytes in and out per stage, what each
filter dropped (counts, reasons, samples in dropped/<filter>.txt), and the bad input seen."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import UserError


def stages(run: dict, tail: dict) -> list[dict]:
    """[{stage, docs_in, docs_out, bytes_in, bytes_out, reasons}] from stage-1 stats and the tail."""
    read, *filters = run["stats"]
    rows = [{"stage": "read+normalise", "docs_in": read.get("docs_in", 0), "docs_out": read.get("docs_in", 0),
             "bytes_in": read.get("bytes_in", 0), "bytes_out": read.get("bytes_normalised", 0)}]
    for name, s in zip(run["steps"][1:], filters, strict=True):
        docs_in, b_in = rows[-1]["docs_out"], rows[-1]["bytes_out"]
        reasons = {k[8:]: v for k, v in s.items() if k.startswith("dropped_") and k != "dropped_bytes"}
        rows.append({"stage": name, "docs_in": docs_in, "docs_out": docs_in - s.get("dropped", 0),
                     "bytes_in": b_in, "bytes_out": b_in - s.get("dropped_bytes", 0), "reasons": reasons})
    last = rows[-1]
    rows.append({"stage": "near_dup", "docs_in": last["docs_out"], "docs_out": tail["docs"],
                 "bytes_in": last["bytes_out"], "bytes_out": tail["bytes"]})
    return rows


def check_not_empty(rows: list[dict], cfg):
    """A corpus emptied by the filters is one error naming the filter that removed the most."""
    if rows[-1]["docs_out"] > 0:
        return
    if rows[0]["docs_in"] == 0:
        raise UserError("empty corpus: the inputs hold no document (empty files?)")
    worst = max(rows[1:], key=lambda r: r["docs_in"] - r["docs_out"])
    fix = {"too_short": f"--set min_chars=N below {cfg.min_chars}", "too_long": "--set max_chars=N",
           "code": "--set code=keep", "language": "--set language=", "repetition": "--set dup_line_frac=N"}
    raise UserError(f"empty corpus: every document was removed; filter '{worst['stage']}' removed the most "
                    f"({worst['docs_in'] - worst['docs_out']} of {rows[0]['docs_in']}); "
                    f"{fix.get(worst['stage'], 'check the inputs or loosen it with --set')}")


def merge_samples(work: Path, out: Path, keep: int) -> dict:
    """dropped/<filter>.RANK.txt of every task -> out/dropped/<filter>.txt (the first `keep`)."""
    names = sorted({p.name.split(".")[0] for p in (work / "dropped").glob("*.txt")})
    files = {}
    for name in names:
        parts = "".join(p.read_text() for p in sorted((work / "dropped").glob(f"{name}.*.txt")))
        docs = parts.split("----- ")[1:keep + 1]
        (out / "dropped").mkdir(exist_ok=True)
        (out / "dropped" / f"{name}.txt").write_text("".join("----- " + d for d in docs))
        files[name] = f"dropped/{name}.txt"
    return files


def merge_problems(work: Path, out: Path) -> list[dict]:
    items = [p for f in sorted((work / "problems").glob("*.json")) for p in json.loads(f.read_text())]
    if items:
        (out / "problems.jsonl").write_text("".join(json.dumps(p) + "\n" for p in items))
    return items


def _mb(b: int) -> str:
    return f"{b / 1e6:.2f}"


def write_report(out: Path, meta: dict, samples: dict, problems: list[dict]):
    read = meta["read"]
    lines = ["# Data report", "",
             f"{len(meta['files'])} input files ({read.get('files_failed', 0)} unreadable), "
             f"{meta['docs']} documents kept ({meta['train_docs']} train, {meta['val_docs']} val), "
             f"{meta['train_tokens']} + {meta['val_tokens']} tokens ({meta['token_dtype']}), vocab {meta['vocab_size']}.",
             f"Corpus sha256 `{meta['corpus_sha256']}`.", "", "## Stages", "",
             "| stage | docs in | docs out | dropped | MB in | MB out | reasons |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in meta["stages"]:
        why = ", ".join(f"{k} {v}" for k, v in r.get("reasons", {}).items())
        lines.append(f"| {r['stage']} | {r['docs_in']} | {r['docs_out']} | {r['docs_in'] - r['docs_out']} | "
                     f"{_mb(r['bytes_in'])} | {_mb(r['bytes_out'])} | {why} |")
    lines += ["", "## Normalisation", "",
              f"NFKC, punctuation unified, lower-case: {meta['config']['lower']}. "
              f"Removed: {read.get('nul_chars', 0)} NUL characters, {read.get('control_chars', 0)} other control "
              f"characters, {read.get('invalid_utf8_bytes', 0)} invalid UTF-8 bytes.", ""]
    mh = meta["minhash"]
    lines += [f"Near-duplicates: MinHash over word {mh['ngram']}-grams, {mh['bands']} bands x {mh['rows']} rows "
              f"(LSH threshold {meta['config']['near_dup_threshold']}), datatrove {meta['datatrove']}.", ""]
    lines += ["## Bad input", ""] + ([f"- {p['kind']}: {p['where']}: {p['detail']}" for p in problems[:30]] or ["None."])
    lines += ["", "## What the filters dropped", ""]
    for name, f in samples.items():
        text = (out / f).read_text()
        lines += [f"### {name} ([{f}]({f}))", "", "```", text[:1200].rstrip(), "```", ""]
    (out / "data-report.md").write_text("\n".join(lines) + "\n")
