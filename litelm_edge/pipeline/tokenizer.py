"""Byte-level BPE tokenizer (HF `tokenizers`), saved as tokenizer.json."""
from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable

from ..config import UserError

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOT = SPECIAL_TOKENS[0]


def train(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UserError(f"--vocab {vocab_size} is too small: byte-level BPE needs at least "
                        f"{256 + len(SPECIAL_TOKENS)}")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok.to_str())


class Tokenizer:
    def __init__(self, json_str: str):
        from tokenizers import Tokenizer as HFTokenizer
        try:
            self.tok = HFTokenizer.from_str(json_str)
        except Exception as e:
            raise UserError(f"corrupt tokenizer.json ({e}): re-run `litelm-edge tokenizer train`") from e

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise UserError(f"tokenizer '{path}' not found: run `litelm-edge tokenizer train` first")
        return cls(p.read_text())

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def eot_id(self) -> int | None:
        return self.tok.token_to_id(EOT)

    def require_eot(self, where: str) -> int:
        """The <|endoftext|> id, which joins documents; a tokenizer without it cannot be used."""
        if self.eot_id is None:
            raise UserError(f"{where} has no {EOT} token, which separates documents: train one with "
                            "`litelm-edge tokenizer train` (it adds it) or add it as a special token")
        return self.eot_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def to_str(self) -> str:
        return self.tok.to_str()

    def save(self, path: str | Path):
        from ..files import write_atomic
        write_atomic(Path(path), self.to_str())
