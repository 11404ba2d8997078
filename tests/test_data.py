import gzip
import hashlib
import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from litelm_edge.config import UserError
from litelm_edge.pipeline import data as D
from litelm_edge.pipeline.data_read import normalize
from litelm_edge.pipeline.tokenizer import SPECIAL_TOKENS, Tokenizer, train

_spec = importlib.util.spec_from_file_location("data_dedup",
                                               Path(__file__).parents[1] / "benchmarks" / "data_dedup.py")
dedup_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dedup_bench)


def quiet(**kw):
    return dict(log=lambda m: None, **kw)


def prose(rng: random.Random, n: int = 40) -> str:
    """An English-like paragraph: no repetition rule, symbol or code pattern fires on it."""
    words = dedup_bench.vocabulary(800)
    return " ".join(rng.choice(words) for _ in range(n)).capitalize() + "."


def write_jsonl(path: Path, texts, compress=None):
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    if compress == "gz":
        body = gzip.compress(body)
    elif compress == "zst":
        import zstandard
        body = zstandard.ZstdCompressor().compress(body)
    path.write_bytes(body)
    return path


def test_tokenizer_round_trip_and_specials(corpus):
    tok = train(D.read_documents(D.expand_inputs([corpus]), D.DataConfig()), 400)
    text = "KING: Speak, fair lady — ünïcode & <|im_start|>!"
    assert tok.decode(tok.encode(text)) == text
    assert all(tok.tok.token_to_id(s) is not None for s in SPECIAL_TOKENS)
    assert [tok.tok.id_to_token(i) for i in tok.encode("a<|endoftext|>b")][1] == "<|endoftext|>"  # kept whole
    assert Tokenizer(tok.to_str()).encode(text) == tok.encode(text)


def test_normalize_counts_what_it_removes():
    assert normalize("a\u00a0 \t b\r\n\n\n\n\nc  ") == "a b\n\nc"
    assert normalize("ﬁne") == "fine"  # NFKC
    assert normalize("\u201cHi\u201d \u2014 it\u2019s", lower=True) == "\"hi\" -- it's"
    counts = {}
    assert normalize("a\x00b\x07c\x00", counts=counts) == "abc"
    assert counts == {"nul_chars": 2, "control_chars": 1}


def test_prepare_writes_memmaps_and_the_corpus_sha256(tmp_path):
    rng = random.Random(1)
    texts = [prose(rng) for _ in range(60)]
    meta = D.prepare([write_jsonl(tmp_path / "c.jsonl", texts)], tmp_path / "d", vocab_size=300, **quiet())
    # recomputed here from the inputs: the normalised documents joined by NUL, in input order
    want = hashlib.sha256("\x00".join(normalize(t) for t in texts).encode()).hexdigest()
    assert meta["corpus_sha256"] == want and meta["docs"] == 60
    train_ids, val_ids = D.token_memmap(tmp_path / "d" / "train.bin"), D.token_memmap(tmp_path / "d" / "val.bin")
    assert train_ids.dtype == np.uint16 and len(train_ids) == meta["train_tokens"] > len(val_ids) > 0
    tok = Tokenizer.load(tmp_path / "d")
    assert train_ids.max() < tok.vocab_size and (train_ids == tok.eot_id).sum() == meta["train_docs"]
    assert "| near_dup |" in (tmp_path / "d" / "data-report.md").read_text()
    assert json.loads((tmp_path / "d" / "meta.json").read_text()) == meta


def test_corpus_sha256_is_the_hash_of_the_documents(tmp_path):
    """Recomputed here from the documents themselves: sha256 of the kept documents joined by NUL."""
    docs = [f"Document {i}: " + " ".join(f"word{i * 7 + j}" for j in range(20)) for i in range(40)]
    lines = [json.dumps({"text": d}) for d in docs] + [json.dumps({"text": "too short"}),
                                                       json.dumps({"text": docs[3]})]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "c.jsonl").write_text("\n".join(lines))
    meta = D.prepare([tmp_path / "in"], tmp_path / "d", vocab_size=300, log=lambda m: None)
    want = hashlib.sha256("\x00".join(docs).encode()).hexdigest()  # the short and the duplicate dropped
    assert meta["corpus_sha256"] == want
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["corpus_sha256"] == want


def test_readers_compressed_parquet_and_bad_input(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = random.Random(2)
    good = [prose(rng) + f" marker{i}" for i in range(7)]
    write_jsonl(tmp_path / "a.jsonl.gz", good[:2], "gz")
    (tmp_path / "b.txt.zst").write_bytes(__import__("zstandard").ZstdCompressor().compress(good[2].encode()))
    pq.write_table(pa.table({"text": good[3:5]}), tmp_path / "c.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")  # no text column
    (tmp_path / "e.jsonl").write_bytes(json.dumps({"text": good[5]}).encode().replace(b"marker5", b"mar\\u0000ker5")
                                       + b"\n{not json\n" + b'{"text": "' + good[6].encode().replace(b"marker", b"\xff\xfemarker") + b'"}\n')
    (tmp_path / "f.jsonl.gz").write_bytes(b"not gzip at all")
    meta = D.prepare([tmp_path], tmp_path / "out", vocab_size=300, **quiet())
    probs = (tmp_path / "out" / "problems.jsonl").read_text()
    assert f"{tmp_path / 'e.jsonl'}:2" in probs and "d.parquet" in probs and "f.jsonl.gz" in probs
    assert meta["read"]["files_failed"] == 2 and meta["read"]["bad_malformed_jsonl"] == 1
    assert meta["read"]["nul_chars"] == 1 and meta["read"]["invalid_utf8_bytes"] == 2
    tok = Tokenizer.load(tmp_path / "out")
    text = tok.decode(np.concatenate([D.token_memmap(tmp_path / "out" / f) for f in ("train.bin", "val.bin")]))
    assert all(f"marker{i}" in text for i in range(7))


def test_every_input_failing_is_one_error(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(b"not gzip")
    write_jsonl(tmp_path / "b.jsonl", ["x"]).write_text("{broken\n")
    with pytest.raises(UserError, match="no input could be read"):
        D.prepare([tmp_path], tmp_path / "out", **quiet())
    assert not (tmp_path / "out").exists()


PLANTED = {
    "too_short": "Too short.",
    "urls": " ".join(f"https://example.com/page/{i}?ref=abc" for i in range(12)) + " see links",
    "symbols": "Deal ### $$$ @@@ ^^^ ~~~ *** ||| <<< >>> %%% !!! " * 6,
    "boilerplate": "Accept our cookies policy to continue.\nClick here to subscribe now.\nAll rights reserved 2024.\n"
                   "Buy now with free shipping.\nA normal closing sentence for this page.",
    "code": "def main(argv):\n    x = load(argv)\n    if x == None:\n        return 1;\n    print(x)\n"
            "class Foo:\n    pass\nimport os\nfor (i = 0; i < n; i++) {\n}\n",
    "repetition": "Buy the best shoes today.\n" * 30,
}


def test_each_filter_drops_its_planted_document(tmp_path):
    rng = random.Random(3)
    good = [prose(rng) for _ in range(30)]
    f = write_jsonl(tmp_path / "c.jsonl", good + list(PLANTED.values()))
    meta = D.prepare([f], tmp_path / "d", vocab_size=300, **quiet())
    assert {k: meta["stats"][k] for k in PLANTED} == {k: 1 for k in PLANTED}
    assert meta["docs"] == 30
    for name, text in PLANTED.items():
        assert text.split("\n")[0][:20] in (tmp_path / "d" / "dropped" / f"{name}.txt").read_text(), name
    assert "repetition" in (tmp_path / "d" / "data-report.md").read_text()
    kept = D.prepare([f], tmp_path / "k", vocab_size=300, cfg=D.DataConfig(code="keep"), **quiet())
    assert "code" not in kept["stats"] and kept["docs"] == 31


def test_language_option_keeps_one_language(tmp_path):
    pytest.importorskip("py3langid")
    en = ["The weather was fine this morning, so we walked along the river and talked about the book we "
          "had both been reading during the long winter evenings." for _ in range(1)]
    de = ["Das Wetter war heute morgen schön, also gingen wir am Fluss entlang und sprachen über das Buch, "
          "das wir beide in den langen Winterabenden gelesen hatten."]
    f = write_jsonl(tmp_path / "c.jsonl", en + de)
    meta = D.prepare([f], tmp_path / "d", vocab_size=300, cfg=D.DataConfig(language="en"), **quiet())
    assert meta["stats"]["language"] == 1 and "Fluss" in (tmp_path / "d" / "dropped" / "language.txt").read_text()


def test_near_duplicates_removed_above_the_threshold_kept_below(tmp_path):
    res = dedup_bench.measure(pairs=12, distinct=30, threshold=0.9, workdir=tmp_path)
    lv = res["levels"]
    assert lv["0.95"]["removed"] >= 11 and lv["0.8"]["removed"] <= 2, lv  # S-curve: P(0.95)=0.96, P(0.8)=0.04
    assert lv["distinct"]["removed"] == 0 and lv["original"]["removed"] == 0
    assert res["minhash"] == {"bands": 10, "rows": 25, "ngram": 5}


def test_exact_duplicates_counted(tmp_path):
    rng = random.Random(4)
    docs = [prose(rng) for _ in range(10)]
    meta = D.prepare([write_jsonl(tmp_path / "c.jsonl", docs + docs[:3])], tmp_path / "d", vocab_size=300,
                     **quiet())
    assert meta["stats"]["exact_dup"] == 3 and meta["docs"] == 10


def test_empty_after_filters_names_the_filter(tmp_path):
    write_jsonl(tmp_path / "c.jsonl", ["hi there", "short one", "tiny"])
    with pytest.raises(UserError, match="empty corpus.*'too_short' removed the most.*min_chars"):
        D.prepare([tmp_path], tmp_path / "out", **quiet())
    assert not (tmp_path / "out").exists()


def test_uint32_token_files_past_65535(tmp_path):
    """A tokenizer of more than 65535 tokens (a small BPE plus added tokens) writes uint32 ids that
    train's batches and eval's windows read back through meta.json's dtype."""
    from litelm_edge.pipeline.eval import EvalConfig, val_windows
    from litelm_edge.pipeline.train import Batches
    rng = random.Random(5)
    base = train([prose(rng) for _ in range(20)], 300)
    base.tok.add_tokens([f"zq{i}zq" for i in range(70_000)])
    (tmp_path / "tok.json").write_text(base.to_str())
    texts = [prose(rng) + f" zq{69_990 + i % 10}zq" * 3 for i in range(40)]
    meta = D.prepare([write_jsonl(tmp_path / "c.jsonl", texts)], tmp_path / "d",
                     tokenizer=tmp_path / "tok.json", **quiet())
    assert meta["token_dtype"] == "uint32" and meta["vocab_size"] > 70_000
    raw = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint32)
    assert raw.max() > 65535 and len(raw) == meta["train_tokens"]
    assert (Batches(tmp_path / "d" / "train.bin", 16, 2, 0).data == raw).all()
    assert max(int(w.max()) for w in val_windows(tmp_path / "d", EvalConfig(windows=2, window_len=8), 8)) < meta["vocab_size"]


def test_split_is_stable_under_reordering():
    from litelm_edge.pipeline.data_tokens import is_val
    docs = [f"document number {i} " * 5 for i in range(200)]
    assert 5 < sum(is_val(d, 0.1) for d in docs) < 40
    assert [d for d in docs if is_val(d, 0.1)] == [d for d in docs if is_val(d, 0.1)]


def test_parallel_tasks_match_one_task(tmp_path):
    """datatrove's local executor with 4 tasks on 2 worker processes (the local mode of the
    Slurm/Ray executors) keeps the same documents, in the same order, as one task."""
    rng = random.Random(6)
    (tmp_path / "in").mkdir()
    docs = [[prose(rng, 120) for _ in range(15)] for _ in range(3)]
    for i, d in enumerate(docs + [[docs[0][0] + " extra"]]):  # file 3 copies a document of file 0
        write_jsonl(tmp_path / "in" / f"{i}.jsonl", d)
    one = D.prepare([tmp_path / "in"], tmp_path / "a", vocab_size=300, cfg=D.DataConfig(tasks=1, workers=1),
                    **quiet())
    many = D.prepare([tmp_path / "in"], tmp_path / "b", vocab_size=300, cfg=D.DataConfig(tasks=4, workers=2),
                     **quiet())
    assert many["corpus_sha256"] == one["corpus_sha256"] and many["docs"] == one["docs"] == 45
    assert one["stats"]["near_dup"] == many["stats"]["near_dup"] == 1


def test_data_cli_bad_input_is_one_line_exit_2(tmp_path):
    (tmp_path / "e.txt").write_text("hi\n\n")
    r = cli("data", tmp_path, "--out", tmp_path / "out", check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: empty corpus") and len(r.stderr.strip().splitlines()) == 1
    r = cli("data", tmp_path, "--out", tmp_path / "out", "--set", "colour=red", check=False)
    assert r.returncode == 2 and "unknown key 'colour'" in r.stderr
    r = cli("data", tmp_path, "--out", tmp_path / "out", "--set", "code=maybe", check=False)
    assert r.returncode == 2 and "use code=drop or code=keep" in r.stderr
