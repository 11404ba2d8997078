"""Quality filters as datatrove pipeline steps: each named, counted, with a sample of what it dropped.

Repetition is datatrove's Gopher filter (Rae et al. 2021, the MassiveText rules); the others are
short rules of the same kind (Gopher symbol ratio, C4 boilerplate lines), written here because
their datatrove versions need spaCy/NLTK models or a bad-words download.
"""
from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter, find_duplicates
from datatrove.utils.word_tokenizers import WordTokenizer

WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
WORD_ONLY = re.compile(r"\w+")
SENT = re.compile(r"[^.!?\n]+[.!?]*")


class Words(WordTokenizer):
    """Regex word splitter for every filter and MinHash shingling (datatrove's English default
    needs spaCy, a large dependency for splitting on spaces and punctuation)."""

    def word_tokenize(self, text: str) -> list[str]:
        return WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in SENT.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in SENT.finditer(text)]


class SampleWriter:
    """Exclusion writer keeping the first `keep` dropped documents of a task in a readable file."""

    def __init__(self, folder: Path, name: str, keep: int):
        self.folder, self.name, self.keep, self.n = Path(folder), name, keep, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, doc, rank: int = 0, **kwargs):
        if self.n >= self.keep:
            return
        self.n += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        why = doc.metadata.get("filter_reason", self.name)
        text = doc.text if len(doc.text) <= 1500 else doc.text[:1500] + " [...]"
        with open(self.folder / f"{self.name}.{rank:05d}.txt", "a", encoding="utf-8") as f:
            f.write(f"----- {doc.id} ({why}, {len(doc.text)} chars)\n{text}\n\n")


class _Bytes:
    """Mixin: counts the UTF-8 bytes of every dropped document (stat `dropped_bytes`)."""

    def filter_batch(self, batch):
        results = super().filter_batch(batch)
        for doc, keep in zip(batch, results, strict=True):
            if not (keep[0] if isinstance(keep, tuple) else keep):
                self.stat_update("dropped_bytes", value=len(doc.text.encode()))
        return results


class Rule(_Bytes, BaseFilter):
    """A named keep-test `check(text, cfg) -> bool` as a counted filter step."""

    def __init__(self, name: str, check, cfg, samples: Path):
        self.name = name  # before __init__: datatrove names the step's stats there
        super().__init__(SampleWriter(samples, name, cfg.samples))
        self.check, self.cfg = check, cfg

    def filter(self, doc):
        return self.check(doc.text, self.cfg)


class Repetition(_Bytes, GopherRepetitionFilter):
    """datatrove's Gopher repetition rules, the n-gram ones on integer n-gram hashes: the same
    counts as its string n-grams (built by join for every position, 10x slower here)."""
    name = "repetition"

    def filter(self, doc):
        text = doc.text
        if not text:
            return False, "empty"
        for part, splitter, frac, char_frac in (("para", self.paragraph_exp, self.dup_para_frac,
                                                 self.dup_para_char_frac),
                                                ("line", self._line_splitter, self.dup_line_frac,
                                                 self.dup_line_char_frac)):
            pieces = splitter.split(text.strip())
            dups, dup_chars = find_duplicates(pieces)
            if frac and dups / len(pieces) > frac:
                return False, f"dup_{part}_frac"
            if char_frac and dup_chars / len(text) > char_frac:
                return False, f"dup_{part}_char_frac"
        ids, lens = word_ids(WORD.findall(text))
        for n, n_frac in self.top_n_grams:
            if len(ids) >= n and top_ngram_chars(ids, lens, n) / len(text) > n_frac:
                return False, f"top_{n}_gram"
        for n, n_frac in self.dup_n_grams:
            dup = dup_ngram_chars(ids, lens, n) if len(ids) >= n else 0
            if dup / len(text) > n_frac:
                return False, f"duplicated_{n}_n_grams"
            if dup == 0:  # no repeated n-gram: no repeated longer one either
                break
        return True


def word_ids(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 64-bit word hashes (the same in every process) and word lengths."""
    h = {w: zlib.crc32(b := w.encode()) << 32 | zlib.crc32(b, 0x9E3779B9) for w in dict.fromkeys(words)}
    return np.fromiter(map(h.__getitem__, words), np.uint64, len(words)), np.fromiter(map(len, words), np.int64, len(words))


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Hash of each n-gram of word hashes, (len - n + 1,) uint64 (wrapping arithmetic)."""
    h = ids[:len(ids) - n + 1].copy()
    for k in range(1, n):
        h = h * np.uint64(0x100000001B3) + ids[k:len(ids) - n + 1 + k]
    return h


def top_ngram_chars(ids, lens, n: int) -> int:
    """Characters of the most frequent n-gram times its count (Gopher top_n_gram; words joined by
    spaces); 0 when no n-gram repeats (datatrove counts a lone n-gram too, which drops any
    document of a dozen words)."""
    h = ngram_hashes(ids, n)
    _, first, counts = np.unique(h, return_index=True, return_counts=True)
    if counts.max() < 2:
        return 0
    i = first[np.argmax(counts)]
    return int((lens[i:i + n].sum() + n - 1) * counts.max())


def dup_ngram_chars(ids, lens, n: int) -> int:
    """Characters of the words covered by repeated n-grams (every occurrence after the first),
    the Gopher paper's definition; datatrove's loop skips past each repeat, an approximation."""
    h = ngram_hashes(ids, n)
    repeat = np.ones(len(h), bool)
    repeat[np.unique(h, return_index=True)[1]] = False
    if not repeat.any():
        return 0
    edge = np.zeros(len(ids) + 1, np.int64)
    np.add.at(edge, np.flatnonzero(repeat), 1)
    np.add.at(edge, np.flatnonzero(repeat) + n, -1)
    return int(lens[np.cumsum(edge[:-1]) > 0].sum())


class Signature(MinhashDedupSignature):
    """datatrove's MinHash signatures with shingles hashed in numpy: lower-cased words, their
    64-bit hashes, n-gram hashes by a rolling product (its own hashes one string n-gram at a time)."""

    def get_shingles(self, text: str) -> np.ndarray:
        ids, _ = word_ids(WORD_ONLY.findall(text.lower()))
        if len(ids) < self.config.n_grams:
            return np.zeros((0, 1), dtype=np.uint64)
        return (ngram_hashes(ids, self.config.n_grams) >> np.uint64(3)).reshape(-1, 1)  # < 2**61: its field


class ExactDedup(_Bytes, BaseFilter):
    """Exact duplicates within a task (a shard of the files): 8-byte digests in a set, about
    70 bytes a document; across tasks the MinHash stage catches them (Jaccard 1)."""
    name = "exact_dup"

    def __init__(self, samples: Path, keep: int):
        super().__init__(SampleWriter(samples, self.name, keep))
        self.seen = set()

    def filter(self, doc):
        h = int.from_bytes(hashlib.blake2b(doc.text.encode(), digest_size=8).digest(), "little")
        if h in self.seen:
            return False
        self.seen.add(h)
        return True


URL = re.compile(r"(?:https?://|www\.)\S+")
SYMBOL = re.compile(r"[^\w\s.,;:!?'\"()\-]")
BOILERPLATE = re.compile(
    r"lorem ipsum|cookies?\b.*\b(use|policy|accept)|privacy policy|terms (of use|of service|and conditions)|"
    r"all rights reserved|click here|subscribe (to|now)|sign up (for|now|today)|buy now|free shipping|"
    r"add to cart|limited time offer|javascript (is|must be) (disabled|enabled)|follow us on|"
    r"share (this|on) (facebook|twitter)|log ?in to (comment|reply)|powered by\b|\bcopyright ©", re.I)
CODE = re.compile(
    r"^\s*(def \w+\(|class \w+[(:]|import \w|from [\w.]+ import|#include\b|#define\b|function\b.*[({]|"
    r"(var|let|const) \w+ ?=|(public|private|static) \w|return\b.*;\s*$)|[{}]\s*$|\)\s*;\s*$|"
    r"==|!=|&&|\|\||=>|::|</?[a-zA-Z][\w-]*( [^>]*)?>", re.M)


def too_short(text, cfg):
    return len(text) >= cfg.min_chars


def too_long(text, cfg):
    return len(text) <= cfg.max_chars


def symbols(text, cfg):
    """Characters that are neither word, space nor common punctuation, as a share of all."""
    body = URL.sub("", text)
    return len(SYMBOL.findall(body)) <= cfg.max_symbol_ratio * max(1, len(body))


def urls(text, cfg):
    return sum(len(m) for m in URL.findall(text)) <= cfg.max_url_ratio * len(text)


BOILERPLATE_HINTS = ("lorem", "cookie", "privacy", "terms ", "rights reserved", "click", "subscribe",
                     "sign up", "buy now", "shipping", "cart", "offer", "javascript", "follow us", "share ",
                     "log in", "login",
                     "powered by", "copyright")
CODE_HINTS = ("def ", "class ", "import ", "#include", "#define", "function", "var ", "let ", "const ",
              "public ", "private ", "static ", "return", "{", "}", ");", "==", "!=", "&&", "||", "=>", "::",
              "<")


def _line_share(text, pattern, hints) -> float:
    """Share of non-empty lines matching pattern; 0 at once when no hint substring is in the text
    (a substring search is ~50x cheaper than the regex over every position)."""
    if not any(h in text for h in hints):
        return 0.0
    lines = [ln for ln in text.split("\n") if ln.strip()]
    return sum(1 for ln in lines if pattern.search(ln)) / max(1, len(lines))


def boilerplate(text, cfg):
    """Ads and boilerplate: lines naming cookies, policies, shopping, sign-ups (C4's line rules)."""
    low = text.lower()
    return "lorem ipsum" not in low and _line_share(low, BOILERPLATE, BOILERPLATE_HINTS) < cfg.boilerplate_max_lines


def code(text, cfg):
    return _line_share(text, CODE, CODE_HINTS) < cfg.code_max_lines


def language(text, cfg):
    import py3langid
    return py3langid.classify(text[:2000])[0] == cfg.language


def quality_steps(cfg, samples: Path) -> list:
    """The filters in order, cheapest first; `code` only when cfg.code == 'drop'."""
    rules = [("too_short", too_short), ("too_long", too_long), ("urls", urls), ("symbols", symbols),
             ("boilerplate", boilerplate)]
    rules += [("code", code)] if cfg.code == "drop" else []
    steps = [Rule(n, f, cfg, samples) for n, f in rules]
    steps.append(Repetition(exclusion_writer=SampleWriter(samples, "repetition", cfg.samples),
                            language=Words(), dup_line_frac=cfg.dup_line_frac,
                            dup_line_char_frac=cfg.dup_line_char_frac))
    if cfg.language:
        steps.append(Rule("language", language, cfg, samples))
    return steps
