"""Streaming corpus readers and normalisation: one document at a time, never the whole corpus.

Inputs are .txt (paragraphs packed into documents of about `doc_chars`), .jsonl (one document a
line, its `text_field`) and .parquet (the `text_field` column, read a row group at a time), each
plain or .gz / .zst. Bad input is counted and recorded (file, line, reason), never fatal on its own.
"""
from __future__ import annotations

import codecs
import io
import json
import re
import unicodedata
from pathlib import Path

from ..config import UserError

SUFFIXES = (".txt", ".jsonl", ".parquet")
COMPRESSION = (".gz", ".zst")

# Invalid UTF-8 bytes are dropped and counted by this decoding error handler (per process).
INVALID_UTF8 = [0]


def _count_invalid(e: UnicodeDecodeError):
    INVALID_UTF8[0] += e.end - e.start
    return "", e.end


codecs.register_error("litelm_count", _count_invalid)

# Punctuation unified to ASCII (NFKC leaves these alone): quotes, dashes, minus, bullets.
PUNCT = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                       "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
                       "\u00ab": '"', "\u00bb": '"', "\u2010": "-", "\u2011": "-", "\u2012": "-",
                       "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2212": "-", "\u2022": "*"})
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")  # keeps \t \n \r
SPACES = re.compile(r"[ \t\u00a0\u3000]+")


def kind(f: Path) -> str:
    """'.txt', '.jsonl' or '.parquet' of a file, seen through a .gz/.zst suffix ('' otherwise)."""
    name = f.name[:-len(f.suffix)] if f.suffix in COMPRESSION else f.name
    s = Path(name).suffix
    return s if s in SUFFIXES else ""


def expand_inputs(inputs) -> list[Path]:
    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(x for x in p.rglob("*") if x.is_file() and kind(x) and x.name != "LICENCE.txt")
        elif p.exists():
            files.append(p)
        else:
            raise UserError(f"input '{p}' not found")
    if not files:
        raise UserError("no .txt, .jsonl or .parquet files (plain, .gz or .zst) in "
                        f"{', '.join(map(str, inputs))}")
    return files


def open_binary(f: Path):
    """The file's decompressed byte stream."""
    if f.suffix == ".gz":
        import gzip
        return gzip.open(f, "rb")
    if f.suffix == ".zst":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(open(f, "rb"), closefd=True)
    return open(f, "rb")


def open_text(f: Path):
    return io.TextIOWrapper(open_binary(f), encoding="utf-8", errors="litelm_count", newline=None)


def normalize(text: str, lower: bool = False, counts: dict | None = None) -> str:
    """NFKC, unified punctuation, control characters and NULs removed (counted), unix newlines,
    spaces collapsed inside lines, at most one blank line in a row; optionally lower-cased."""
    if counts is not None:
        nul = text.count("\x00")
        counts["nul_chars"] = counts.get("nul_chars", 0) + nul
        counts["control_chars"] = counts.get("control_chars", 0) + len(CONTROL.findall(text)) - nul
    text = CONTROL.sub("", text)
    text = unicodedata.normalize("NFKC", text).translate(PUNCT).replace("\r\n", "\n").replace("\r", "\n")
    lines = [SPACES.sub(" ", ln).strip() for ln in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text.lower() if lower else text


class Problems:
    """Bad input seen while reading: counts by kind, and the first `keep` of them with file:line."""

    def __init__(self, keep: int = 1000):
        self.counts, self.items, self.keep = {}, [], keep

    def add(self, what: str, where: str, detail: str):
        self.counts[what] = self.counts.get(what, 0) + 1
        if len(self.items) < self.keep:
            self.items.append({"kind": what, "where": where, "detail": detail[:200]})


def read_file(f: Path, text_field: str, doc_chars: int, problems: Problems):
    """Yield (where, raw text) of one file; bad lines and unreadable files go to `problems`."""
    k = kind(f)
    try:
        if k == ".jsonl":
            yield from _jsonl(f, text_field, problems)
        elif k == ".parquet":
            yield from _parquet(f, text_field, problems)
        elif k == ".txt":
            yield from _txt(f, doc_chars)
        else:
            problems.add("unreadable_file", str(f), "not .txt/.jsonl/.parquet (optionally .gz/.zst)")
    except (OSError, EOFError, ValueError) as e:  # corrupt archive, permission, truncated stream
        problems.add("unreadable_file", str(f), f"{type(e).__name__}: {e}")


def _jsonl(f: Path, field: str, problems: Problems):
    with open_text(f) as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
                if not isinstance(text, str):
                    raise TypeError(f"\"{field}\" is {type(text).__name__}, not a string")
            except KeyError:
                problems.add("missing_field", f"{f}:{i}", f"no \"{field}\" key: pass --text-field NAME")
                continue
            except (json.JSONDecodeError, TypeError) as e:
                problems.add("malformed_jsonl", f"{f}:{i}", f"{type(e).__name__}: {e}")
                continue
            yield f"{f}:{i}", text


def _parquet(f: Path, field: str, problems: Problems):
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(open_binary(f) if f.suffix in COMPRESSION else f)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not parquet
        problems.add("unreadable_file", str(f), f"{type(e).__name__}: {e}")
        return
    if field not in pf.schema_arrow.names:
        problems.add("missing_field", str(f),
                     f"no column \"{field}\" (have: {', '.join(pf.schema_arrow.names)}): "
                     "pass --text-field")
        return
    row = 0
    for g in range(pf.num_row_groups):
        for text in pf.read_row_group(g, columns=[field]).column(0).to_pylist():
            row += 1
            if isinstance(text, str):
                yield f"{f}:row {row}", text


def _txt(f: Path, doc_chars: int):
    """Paragraphs (blank-line separated) packed into documents of about doc_chars characters."""
    doc, size, para, start, i = [], 0, [], 1, 0
    with open_text(f) as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                para.append(line)
                continue
            if para:
                doc.append("".join(para))
                size += len(doc[-1])
                para = []
            if size >= doc_chars:
                yield f"{f}:{start}", "\n".join(doc)
                doc, size, start = [], 0, i + 1
    if para:
        doc.append("".join(para))
    if doc:
        yield f"{f}:{start}", "\n".join(doc)
