"""Progress: a bar on a terminal, one line per 10 % in a log (a CI log once had 1,608 lines for 800
training steps)."""
from __future__ import annotations

import io

from litelm_edge.reports import progress


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_one_line_per_ten_percent():
    log = io.StringIO()
    bar = progress.bar(800, "train", "step", file=log)
    for i in range(800):
        bar.update(1)
        bar.set_postfix(loss=f"{5 - i / 800:.3f}")
        if i == 399:
            bar.write("step 400: val loss 4.5")
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 11 and "\r" not in log.getvalue()
    assert lines[0].startswith("train:  10% 80/800 step") and lines[-1].startswith("train: 100% 800/800 step")
    assert "step 400: val loss 4.5" in lines and lines[-1].endswith("loss=4.001")


def test_resumed_bar_starts_from_its_step_and_a_terminal_gets_tqdm():
    log = io.StringIO()
    bar = progress.bar(100, "train", "step", initial=95, file=log)
    for _ in range(5):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: 100% 100/100 step")  # 90 % was passed before
    tty = Tty()
    b = progress.bar(10, "push", "B", file=tty, unit_scale=True)
    b.update(10)
    b.close()
    assert "\r" in tty.getvalue() and "push" in tty.getvalue()
    assert progress.bar(10, "x", file=log, disable=True).disable
