"""Precision and recall of near-duplicate removal on a generated corpus with planted near-duplicates.

Each planted pair is a document and a copy edited word by word until the Jaccard similarity of
their word 5-gram shingle sets (the shingles MinHash sees) reaches a level: 0.95, 0.9, 0.8; the
rest are distinct documents. `litelm-edge data` runs on the corpus; a removed copy is a document
listed in dropped/near_dup.txt. Truth: a pair above the threshold (0.9) is a duplicate; pairs at
0.9 sit on the threshold and are reported apart.

    python benchmarks/data_dedup.py                       # 200 pairs a level, 2000 distinct
    python benchmarks/data_dedup.py --pairs 50 --distinct 500 --threshold 0.9
"""
from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
from pathlib import Path

LEVELS = (0.95, 0.9, 0.8)
SYLLABLES = "ka lo mi ne ru sa ti vo wen tar el ion ber dal fen gor hul is jor kel".split()


def vocabulary(n: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = {"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n * 2)}
    return sorted(words)[:n]


def shingles(text: str, n: int = 5) -> set:
    w = re.findall(r"\w+", text.lower())
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / max(1, len(x | y))


def document(rng: random.Random, vocab: list[str], n_words: int) -> list[str]:
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf-like, as in prose
    return rng.choices(vocab, weights, k=n_words)


def edit_to(words: list[str], level: float, rng: random.Random, vocab: list[str]) -> tuple[str, float]:
    """Replace words at random positions until the shingle Jaccard crosses `level`; the text on
    whichever side of the crossing is closer to it."""
    out, base, prev = list(words), " ".join(words), (" ".join(words), 1.0)
    for pos in rng.sample(range(len(words)), len(words)):
        out[pos] = rng.choice(vocab)
        j = jaccard(base, " ".join(out))
        if j <= level:
            return prev if prev[1] - level < level - j else (" ".join(out), j)
        prev = (" ".join(out), j)
    return prev


def corpus(pairs: int, distinct: int, seed: int = 0, n_words: int = 600) -> list[dict]:
    """[{text, kind: 'distinct' | 'original' | level, jaccard}] in shuffled order, originals first."""
    rng, vocab = random.Random(seed), vocabulary(seed=seed)
    docs = [{"text": " ".join(document(rng, vocab, n_words)) + ".", "kind": "distinct"} for _ in range(distinct)]
    copies = []
    for level in LEVELS:
        for _ in range(pairs):
            words = document(rng, vocab, n_words)
            text, j = edit_to(words, level, rng, vocab)
            docs.append({"text": " ".join(words) + ".", "kind": "original"})
            copies.append({"text": text + ".", "kind": level, "jaccard": round(j, 4)})
    rng.shuffle(docs)
    rng.shuffle(copies)
    return docs + copies  # originals come first, so the copy is the one a dedup removes


def removed_lines(out: Path) -> set[int]:
    """Line numbers (1-based, in corpus.jsonl) listed in dropped/near_dup.txt."""
    f = out / "dropped" / "near_dup.txt"
    return {int(m) for m in re.findall(r"^----- \S+:(\d+) ", f.read_text(), re.M)} if f.is_file() else set()


def measure(pairs: int, distinct: int, threshold: float = 0.9, seed: int = 0, workdir: Path | None = None) -> dict:
    from litelm_edge.pipeline.data import DataConfig, prepare
    work = Path(workdir or tempfile.mkdtemp(prefix="dedup-"))
    docs = corpus(pairs, distinct, seed)
    (work / "in").mkdir(parents=True, exist_ok=True)
    (work / "in" / "corpus.jsonl").write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in docs))
    cfg = DataConfig(near_dup_threshold=threshold, samples=len(docs), workers=1)
    meta = prepare([work / "in"], work / "out", vocab_size=300, cfg=cfg, log=lambda m: None)
    gone = removed_lines(work / "out")
    res = {"threshold": threshold, "minhash": meta["minhash"], "levels": {}}
    for kind in (*LEVELS, "original", "distinct"):
        idx = [i + 1 for i, d in enumerate(docs) if d["kind"] == kind]
        js = [d["jaccard"] for d in docs if d["kind"] == kind and "jaccard" in d]
        res["levels"][str(kind)] = {"docs": len(idx), "removed": sum(i in gone for i in idx),
                                    "mean_jaccard": round(sum(js) / len(js), 4) if js else None}
    lv = res["levels"]
    tp = lv["0.95"]["removed"]
    fp = lv["0.8"]["removed"] + lv["original"]["removed"] + lv["distinct"]["removed"]
    res["precision"] = tp / max(1, tp + fp)  # 0.9-level pairs (on the threshold) left out of both
    res["recall"] = tp / max(1, lv["0.95"]["docs"])
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200, help="planted pairs per similarity level")
    ap.add_argument("--distinct", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=0.9)
    a = ap.parse_args()
    r = measure(a.pairs, a.distinct, a.threshold)
    print(f"MinHash {r['minhash']}, threshold {r['threshold']}")
    for kind, v in r["levels"].items():
        print(f"  {kind:>9}: {v['removed']:5d} / {v['docs']:5d} removed "
              f"({v['removed'] / max(1, v['docs']):.1%})"
              + (f", mean Jaccard {v['mean_jaccard']}" if v["mean_jaccard"] else ""))
    print(f"precision {r['precision']:.3f}, recall {r['recall']:.3f} (truth: 0.95 pairs are duplicates; "
          "0.8 pairs, originals and distinct documents are not; 0.9 pairs sit on the threshold)")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
