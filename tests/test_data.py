import json

import numpy as np
import pytest

from litelm_edge import data as D
from litelm_edge.config import UserError
from litelm_edge.tokenizer import SPECIAL_TOKENS, Tokenizer, train


def test_tokenizer_round_trip_and_specials(corpus):
    tok = train(D.read_documents(D.expand_inputs([corpus]), D.DataConfig()), 400)
    text = "KING: Speak, fair lady — ünïcode & <|im_start|>!"
    assert tok.decode(tok.encode(text)) == text
    assert all(tok.tok.token_to_id(s) is not None for s in SPECIAL_TOKENS)
    assert Tokenizer(tok.to_str()).encode(text) == tok.encode(text)


def test_normalize():
    assert D.normalize("a\u00a0 \t b\r\n\n\n\n\nc  ") == "a b\n\nc"
    assert D.normalize("ﬁne") == "fine"  # NFKC


def test_clean_dedups_and_filters():
    para = "x" * 80
    docs, stats = D.clean([para, para + "\n\nshort", "tiny", "y" * 100], D.DataConfig(min_chars=10))
    assert docs == [para, "y" * 100]
    assert stats["dup_paragraphs"] == 1 and stats["too_short"] == 2


def test_prepare_writes_memmaps(tmp_path, corpus):
    meta = D.prepare([corpus], tmp_path / "d", vocab_size=300, log=lambda m: None)
    train_ids = np.fromfile(tmp_path / "d" / "train.bin", dtype=np.uint16)
    val_ids = np.fromfile(tmp_path / "d" / "val.bin", dtype=np.uint16)
    assert len(train_ids) == meta["train_tokens"] > 10 * len(val_ids) > 0
    tok = Tokenizer.load(tmp_path / "d")
    assert train_ids.max() < tok.vocab_size and (train_ids == tok.eot_id).sum() > 10
    assert json.loads((tmp_path / "d" / "meta.json").read_text()) == meta


def test_corpus_sha256_is_the_hash_of_the_documents(tmp_path):
    """Recomputed here from the documents themselves: sha256 of the kept documents joined by NUL."""
    import hashlib
    docs = [f"Document {i}: " + " ".join(f"word{i * 7 + j}" for j in range(20)) for i in range(40)]
    lines = [json.dumps({"text": d}) for d in docs] + [json.dumps({"text": "too short"}), json.dumps({"text": docs[3]})]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "c.jsonl").write_text("\n".join(lines))
    meta = D.prepare([tmp_path / "in"], tmp_path / "d", vocab_size=300, log=lambda m: None)
    want = hashlib.sha256("\x00".join(docs).encode()).hexdigest()  # the short and the duplicate dropped
    assert meta["corpus_sha256"] == want
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["corpus_sha256"] == want


def test_split_is_stable_under_reordering():
    docs = [f"document number {i} " * 5 for i in range(200)]
    a = D.split(docs, 0.1)[1]
    b = D.split(list(reversed(docs)), 0.1)[1]
    assert sorted(a) == sorted(b) and 5 < len(a) < 40


def test_empty_corpus_is_a_user_error(tmp_path):
    (tmp_path / "e.txt").write_text("hi\n\n")
    with pytest.raises(UserError, match="empty corpus"):
        D.prepare([tmp_path], tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_jsonl_input(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "Hello  world " * 10}) + "\n\n" + json.dumps({"no": 1}) + "\n")
    with pytest.raises(UserError, match="a.jsonl:3"):
        list(D.read_documents([tmp_path / "a.jsonl"], D.DataConfig()))
