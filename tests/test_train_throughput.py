"""benchmarks/train_throughput.py: the rate is the difference of two real runs of train(), the hours
are that rate extrapolated, and the verdict reads the design's 12 h."""
import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("train_throughput",
                                               Path(__file__).parents[1] / "benchmarks" / "train_throughput.py")
tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tt)


def test_rate_hours_and_verdict_follow_from_two_runs(data_dir, tmp_path, monkeypatch):
    calls = []
    real = tt.run_once
    monkeypatch.setattr(tt, "run_once", lambda *a: calls.append(a[2:]) or real(*a))
    tt.main(["--data", str(data_dir), "--preset", "tiny", "--batch", "2,4", "--block", "16",
             "--steps", "3", "--warmup", "2", "--out", str(tmp_path / "r.json")])
    # one discarded start-up run, then per batch size a short (warmup) and a long (warmup + steps) run
    assert calls == [("tiny", 2, 16, 2), ("tiny", 2, 16, 2), ("tiny", 2, 16, 5), ("tiny", 4, 16, 2),
                     ("tiny", 4, 16, 5)]
    r = json.loads((tmp_path / "r.json").read_text())
    assert [row["batch"] for row in r["rows"]] == [2, 4] and r["threshold_h"] == 12.0
    for row in r["rows"]:
        assert row["seconds"] > 0 and row["tokens_per_s"] == pytest.approx(3 * row["batch"] * 16 / row["seconds"])
        for name, tokens in r["budgets_tokens"].items():
            assert row["hours_estimated"][name] == pytest.approx(tokens / row["tokens_per_s"] / 3600)
    assert r["budgets_tokens"]["Chinchilla (20 tokens a parameter)"] == 20 * r["n_params"]
    best = max(r["rows"], key=lambda x: x["tokens_per_s"])
    assert all(v["under_threshold"] == (v["hours"] < 12.0) and v["hours"] == best["hours_estimated"][k]
               for k, v in r["verdict"].items())
    assert "linear" in r["method"] and r["facts"]["torch"]
