"""Issue 23's "one line instead of a traceback" cases: bench protocol values (host CLI, runner on the
device), prompts longer than the model's positions (the same on the artifact and checkpoint paths
of generate)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import cli
from test_artifact_paths import device_runner


def one_line(r, code=2, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


BAD = [("--reps", "0", ">= 1"), ("--concurrency", "0", ">= 1"), ("--prompt-len", "0", ">= 1"),
       ("--gen-len", "0", ">= 1"), ("--warmup", "-1", ">= 0"), ("--threads", "0", ">= 1")]


@pytest.mark.parametrize("opt,value,need", BAD)
def test_bench_protocol_values_are_one_line_naming_the_option(x86_fp32, tmp_path, opt, value, need):
    line = one_line(cli("bench", x86_fp32, opt, value, "--report-dir", tmp_path, check=False))
    assert line == f"error: {opt} must be an integer {need}, got {value}"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("opt,value,need",
                         BAD[:4] + [("--iters", "0", ">= 1"), ("--spin", "2", ">= 0 and <= 1")])
def test_the_device_runner_checks_the_protocol_too(x86_fp32, tmp_path, opt, value, need):
    """A runner started by hand (or by an older host) on the device: the same line, exit 2."""
    r = subprocess.run([sys.executable, "-E", "-s", str(device_runner(tmp_path)), str(x86_fp32),
                        "--out", str(tmp_path / "r.json"), opt, value], capture_output=True, text=True)
    assert one_line(r) == f"error: {opt} must be an integer {need}, got {value}"


def test_prompt_and_decode_must_fit_the_positions(x86_fp32, tmp_path):
    line = one_line(cli("bench", x86_fp32, "--prompt-len", "100", "--gen-len", "64", check=False))
    assert line == ("error: --prompt-len 100 + --gen-len 64 exceed the model's 128 positions: lower them so "
                    "they sum to at most 128")


def test_a_prompt_longer_than_the_positions_is_refused_alike_on_both_paths(x86_fp32, tiny_run):
    long = "ROMEO: wherefore art thou " * 60  # > 128 tokens
    a = one_line(cli("generate", "--artifact", x86_fp32, "--prompt", long, check=False))
    c = one_line(cli("generate", "--checkpoint", tiny_run, "--prompt", long, check=False))
    assert a == c and "model holds 128 positions: shorten --prompt to at most 127 tokens" in a


def test_tokens_stop_at_the_last_position_alike_with_a_notice(x86_fp32, tiny_run):
    """Room for fewer tokens than asked: both paths give the same count, and say so on stderr."""
    from litelm_edge.pipeline.generate import generate
    from litelm_edge.pipeline.tokenizer import Tokenizer
    tok = Tokenizer.load(x86_fp32 / "tokenizer.json")
    prompt = " ".join(["the"] * 400)
    ids = tok.encode(prompt)
    while len(ids) > 120:
        prompt = prompt[: len(prompt) * 120 // len(ids)]
        ids = tok.encode(prompt)
    notes = {"a": [], "c": []}
    outs = {"a": generate(x86_fp32, prompt, 50, from_artifact=True, log=notes["a"].append),
            "c": generate(tiny_run, prompt, 50, log=notes["c"].append)}
    room = 128 - len(ids)
    assert notes["a"] == notes["c"] == [f"note: {room} new tokens, not 50: the prompt's {len(ids)} tokens and the "
                                        f"model's 128 positions leave room for {room}"]
    assert outs["a"] == outs["c"]  # fp32 artifact: greedy agrees with torch


def test_empty_prompt_and_bad_sampling_settings_are_one_line(x86_fp32):
    one_line(cli("generate", "--artifact", x86_fp32, "--prompt", "", check=False), 2,
             "pass a non-empty --prompt")
    one_line(cli("generate", "--artifact", x86_fp32, "--temperature", "nan", check=False), 2,
             "--temperature finite")
