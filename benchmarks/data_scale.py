"""Throughput (MB/s) and peak memory of `litelm-edge data` on a generated corpus of a given size.

The corpus is English-like prose (sentences drawn from a pool of 200k made of a Zipf vocabulary) in
.jsonl files of 50 MB, with planted junk per 1000 documents: 20 exact copies, 20 near copies
(Jaccard ~0.95), 10 each of boilerplate, code, URL spam, line repetition, too short. The run is a
subprocess; memory is sampled every 0.2 s over its whole process tree (the sum: datatrove's
workers are separate processes) and its largest single process.

    python benchmarks/data_scale.py --mb 100
    python benchmarks/data_scale.py --mb 1000 --keep /tmp/corpus-1g      # reuse the corpus next time
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

JUNK = {
    "boilerplate": "Accept cookies to continue browsing.\nClick here to subscribe now!\nFree shipping on orders.\n"
                   "All rights reserved.\nFollow us on social media.",
    "code": "import os\ndef load(path):\n    with open(path) as f:\n        return f.read();\nclass Cache:\n"
            "    def get(self, k):\n        return self.d[k] if k != None else {}\n",
    "urls": "Links: " + " ".join(f"https://shop.example.com/item/{i}?utm=ad" for i in range(30)),
    "repetition": "Best deals today only.\n" * 40,
    "too_short": "Short note.",
}


def pool(rng, n_sent: int = 200_000, n_vocab: int = 20_000) -> list[str]:
    syll = np.array("ka lo mi ne ru sa ti vo wen tar el ion ber dal fen gor hul is jor kel an or".split())
    vocab = ["".join(syll[rng.integers(0, len(syll), rng.integers(1, 4))]) for _ in range(n_vocab)]
    p = 1 / np.arange(1, n_vocab + 1)
    p /= p.sum()
    ids = rng.choice(n_vocab, size=(n_sent, 14), p=p)
    lens = rng.integers(6, 15, n_sent)
    return [" ".join(vocab[i] for i in row[:k]).capitalize() + "." for row, k in zip(ids, lens, strict=True)]


def generate(out: Path, mb: int, seed: int = 0, file_mb: int = 50) -> dict:
    """Writes out/NNN.jsonl until `mb` MB; returns the planted counts."""
    rng = np.random.default_rng(seed)
    sents, planted = pool(rng), {k: 0 for k in ("exact_dup", "near_dup", *JUNK)}
    out.mkdir(parents=True, exist_ok=True)
    total, n_file, recent = 0, 0, []
    while total < mb * 1e6:
        with open(out / f"{n_file:03d}.jsonl", "w") as f:
            size = 0
            while size < file_mb * 1e6 and total + size < mb * 1e6:
                doc, kind = _doc(rng, sents, recent)
                planted[kind] = planted.get(kind, 0) + (kind != "prose")
                line = json.dumps({"text": doc}) + "\n"
                f.write(line)
                size += len(line)
        total, n_file = total + size, n_file + 1
    return planted


def _doc(rng, sents, recent) -> tuple[str, str]:
    r = rng.integers(0, 1000)
    if recent and r < 20:
        return recent[rng.integers(0, len(recent))], "exact_dup"
    if recent and r < 40:
        words = recent[rng.integers(0, len(recent))].split(" ")
        for i in rng.integers(0, len(words), max(1, len(words) // 120)):  # ~0.95 Jaccard of 5-grams
            words[i] = "edited"
        return " ".join(words), "near_dup"
    for k, kind in enumerate(JUNK):
        if 40 + 10 * k <= r < 50 + 10 * k:
            return JUNK[kind] + f" {r}" * (kind != "too_short"), kind
    doc = " ".join(sents[i] for i in rng.integers(0, len(sents), rng.integers(20, 60)))
    recent.append(doc)
    if len(recent) > 500:
        recent.pop(0)
    return doc, "prose"


def run(corpus: Path, out: Path, sets: list[str], every_s: float = 60) -> dict:
    """The data command as a subprocess; its log goes to out.log; a progress line every every_s."""
    import psutil
    cmd = [sys.executable, "-m", "litelm_edge.cli", "data", str(corpus), "--out", str(out), "--vocab", "8192",
           *[a for s in sets for a in ("--set", s)]]
    t0, peak_sum, peak_one, last = time.time(), 0, 0, time.time()
    logf = out.with_suffix(".log")
    with open(logf, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
        proc = psutil.Process(p.pid)
        while p.poll() is None:
            try:
                rss = [q.memory_info().rss for q in [proc, *proc.children(recursive=True)]]
                peak_sum, peak_one = max(peak_sum, sum(rss)), max(peak_one, max(rss))
            except psutil.Error:
                pass
            if time.time() - last > every_s:
                last = time.time()
                print(f"  {last - t0:.0f} s: peak RSS {peak_sum / 2**20:.0f} MB (sum), {peak_one / 2**20:.0f} MB (one "
                      f"process), load {os.getloadavg()[0]:.1f}; {logf.read_text().strip().splitlines()[-1:]}", flush=True)
            time.sleep(0.2)
    wall = time.time() - t0
    output = logf.read_text()
    if p.returncode:
        raise SystemExit(f"data failed ({p.returncode}):\n{output[-3000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_sum_mb": round(peak_sum / 2**20),
            "peak_rss_one_mb": round(peak_one / 2**20), "log": output.strip().splitlines()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--keep", type=Path, help="corpus folder to keep (made when missing)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="DataConfig override (repeatable)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="data-scale-"))
    corpus = a.keep or work / "corpus"
    t0 = time.time()
    planted = json.loads((corpus / "planted.json").read_text()) if (corpus / "planted.json").is_file() else None
    if planted is None:
        planted = generate(corpus, a.mb)
        (corpus / "planted.json").write_text(json.dumps(planted))
    mb = sum(f.stat().st_size for f in corpus.glob("*.jsonl")) / 1e6
    print(f"corpus {mb:.0f} MB ({time.time() - t0:.0f} s to generate), planted {planted}", flush=True)
    load0 = os.getloadavg()[0]
    r = run(corpus, work / "out", a.sets)
    meta = json.loads((work / "out" / "meta.json").read_text())
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               "?")
    res = dict(r, mb=round(mb), mb_per_s=round(mb / r["wall_s"], 3), cpus=os.cpu_count(), cpu=cpu,
               load_before_after=[load0, os.getloadavg()[0]], dropped=meta["stats"],
               docs_in=meta["stages"][0]["docs_in"], docs_out=meta["docs"], planted=planted,
               tokens=meta["train_tokens"] + meta["val_tokens"])
    res.pop("log")
    print("\n".join(r["log"][-4:]))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
