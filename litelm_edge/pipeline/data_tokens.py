"""The pipeline's tail, one process: near-duplicates removed while reading kept/, a held-out split by
content hash, BPE trained on a streamed sample, token files written a batch at a time.

    train.bin, val.bin   token ids (uint16 when the vocabulary fits, else uint32: meta.json's
                         `token_dtype`), documents joined by <|endoftext|>
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

BATCH = 512  # documents per encode_batch call (tokenizers spreads a batch over the cores)


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65535 else np.uint32


def is_val(text: str, val_fraction: float) -> bool:
    """Held-out documents chosen by content hash: stable across runs and input order."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "big") / 2**32 < val_fraction


def _kept(path: Path):
    from datatrove.data import Document
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                yield Document(text=d["text"], id=d["id"])


def documents(work: Path, tasks: int, near_dup=None):
    """Texts of kept/ in rank order; `near_dup` (datatrove's MinhashDedupFilter) drops the
    duplicates stage 3 found. Two reads of the same folder give the same documents."""
    for rank in range(tasks):
        docs = _kept(work / "kept" / f"{rank:05d}.jsonl")
        for d in (near_dup.run(docs, rank, tasks) if near_dup else docs):
            yield d.text


def sample(texts, sample_bytes: int, total_bytes: int, val_fraction: float):
    """A stream of about sample_bytes of training documents spread over the whole corpus."""
    keep = min(1.0, sample_bytes / max(1, total_bytes))
    for t in texts:
        if not is_val(t, val_fraction) and int.from_bytes(hashlib.md5(t.encode()).digest()[:4], "big") / 2**32 < keep:
            yield t


class TokenWriter:
    """Appends token ids to train.bin / val.bin; documents are held-out by content hash. The last
    training document is held back so a tiny corpus with no held-out document still gets one."""

    def __init__(self, out: Path, tok, val_fraction: float):
        self.tok, self.val_fraction, self.dtype = tok, val_fraction, token_dtype(tok.vocab_size)
        self.files = {"train": open(out / "train.bin", "wb"), "val": open(out / "val.bin", "wb")}
        self.tokens, self.docs = {"train": 0, "val": 0}, {"train": 0, "val": 0}
        self.sha, self.n, self.bytes, self.held, self.batch = hashlib.sha256(), 0, 0, None, []

    def add(self, text: str):
        b = text.encode()
        self.sha.update(b"\x00" + b if self.n else b)  # sha256 of the documents joined by NUL
        self.n, self.bytes = self.n + 1, self.bytes + len(b)
        self.batch.append(text)
        if len(self.batch) >= BATCH:
            self._flush()

    def _flush(self):
        for text, ids in zip(self.batch, self.tok.encode_batch(self.batch), strict=True):
            split = "val" if is_val(text, self.val_fraction) else "train"
            if split == "train":
                self.held, ids = ids, self.held
                if ids is None:
                    continue
            self._write(split, ids)
        self.batch = []

    def _write(self, split: str, ids: list[int]):
        arr = np.asarray(ids + [self.tok.eot_id], dtype=self.dtype)
        arr.tofile(self.files[split])
        self.tokens[split] += int(arr.size)
        self.docs[split] += 1

    def close(self) -> dict:
        self._flush()
        if self.held is not None:
            self._write("val" if self.docs["val"] == 0 and self.docs["train"] > 0 else "train", self.held)
        for f in self.files.values():
            f.close()
        return {"corpus_sha256": self.sha.hexdigest(), "docs": self.n, "bytes": self.bytes,
                "train_docs": self.docs["train"], "val_docs": self.docs["val"],
                "train_tokens": self.tokens["train"], "val_tokens": self.tokens["val"],
                "token_dtype": np.dtype(self.dtype).name}


def tokenise(work: Path, out: Path, tasks: int, cfg, tokenizer, vocab_size: int, total_bytes: int):
    """Near-dedup + split + (BPE on a sample) + token files -> (summary, tokenizer)."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupFilter
    from . import tokenizer as T
    from .data_filters import SampleWriter
    if tokenizer:
        tok = T.Tokenizer.load(tokenizer)
    else:
        first = MinhashDedupFilter(str(work / "remove"))
        tok = T.train(sample(documents(work, tasks, first), cfg.tokenizer_sample_mb * 2**20, total_bytes,
                             cfg.val_fraction), vocab_size)
    tok.require_eot(f"tokenizer '{tokenizer}'")
    near = MinhashDedupFilter(str(work / "remove"),
                              exclusion_writer=SampleWriter(work / "dropped", "near_dup", cfg.samples))
    w = TokenWriter(out, tok, cfg.val_fraction)
    for text in documents(work, tasks, near):
        w.add(text)
    return w.close(), tok
