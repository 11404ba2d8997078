"""The one progress helper: a tqdm bar on a terminal, a line per EVERY % of the work otherwise.

tqdm writes a carriage-return update several times a second; in a CI log or a file each one is a
line (1,608 lines for 800 training steps). Off a terminal this writes plain lines instead: one at
each EVERY % of the total, with the latest postfix (loss, lr), and the messages passed to write().
"""
from __future__ import annotations

import sys
import time

EVERY = 10  # %: a line each time the work passes another 10 % of its total, off a terminal


class Lines:
    """tqdm's update/set_postfix/write/close, printing a line per `every` % of the total."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, every: int = EVERY, file=None):
        self.total, self.desc, self.unit, self.n, self.every = total, desc, unit, initial, every
        self.file = file or sys.stderr
        self.postfix, self.t0, self._shown = "", time.monotonic(), self._step(initial)
        self._due = False  # a line is owed: printed at the next call, so it shows that step's postfix

    def _step(self, n: int) -> int:
        return int(100 * n / self.total) // self.every if self.total else 0

    def update(self, k: int = 1):
        self._flush()
        self.n += k
        if self._step(self.n) > self._shown or self.n == self.total:
            self._shown, self._due = self._step(self.n), True

    def _flush(self):
        if self._due:
            self._due = False
            self._line()

    def _line(self):
        pct = 100 * self.n / self.total if self.total else 100.0
        rate = self.n / max(time.monotonic() - self.t0, 1e-9)
        print(f"{self.desc}: {pct:3.0f}% {self.n}/{self.total} {self.unit}, {rate:.3g} {self.unit}/s"
              + (f", {self.postfix}" if self.postfix else ""), file=self.file, flush=True)

    def set_postfix(self, **kw):
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())
        self._flush()

    def write(self, msg: str):
        self._flush()
        print(msg, file=self.file, flush=True)

    def close(self):
        self._flush()


def bar(total: int, desc: str, unit: str = "it", initial: int = 0, disable: bool = False, file=None,
        **tqdm_kw):
    """A tqdm bar when `file` (default stderr) is a terminal, else Lines; nothing when disabled.
    tqdm_kw (unit_scale, leave) apply to the terminal's bar."""
    from tqdm import tqdm
    file = file or sys.stderr
    if disable:
        return tqdm(total=total, disable=True)
    if hasattr(file, "isatty") and file.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file, **tqdm_kw)
    return Lines(total, desc, unit, initial, file=file)
