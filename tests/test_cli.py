"""The console entry point as a user meets it: help, bad input, and train -> build -> bench."""
import json

import pytest

from conftest import TINY_SETS, cli


def all_commands():
    from litelm_edge.cli import cli as group
    out = []
    for name, cmd in group.commands.items():
        out.append([name])
        out += [[name, sub] for sub in getattr(cmd, "commands", {})]
    return out


@pytest.mark.parametrize("cmd", all_commands(), ids=" ".join)
def test_help_of_every_command(cmd):
    r = cli(*cmd, "--help")
    assert "Usage:" in r.stdout and r.stderr == ""


@pytest.mark.parametrize("cmd", ["push", "bench"])
def test_accept_new_host_key_help_says_where_the_key_goes(cmd):
    """Where remote.py really records it (test_remote.py), not always ~/.ssh/known_hosts."""
    help_text = " ".join(cli(cmd, "--help").stdout.split())
    assert "in ssh's UserKnownHostsFile, else ~/.ssh/known_hosts" in help_text


def test_help_imports_no_heavy_runtime():
    import subprocess
    import sys
    code = ("import sys; from litelm_edge.cli import cli; "
            "cli.main(['--help'], standalone_mode=False); "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'tvm', 'ai_edge_litert', 'onnx') if m in "
            "sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "[]"


def one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0]


def test_unknown_target_lists_the_valid_ones(tiny_run, tmp_path):
    r = cli("build", "--target", "rpi3", "--checkpoint", tiny_run, "--out", tmp_path / "a", check=False)
    one_line_error(r, "unknown target 'rpi3', have:", "x86")


def test_missing_and_corrupt_checkpoint(tiny_run, tmp_path):
    """A real checkpoint whose weights were damaged on disk: its sha256 check says so, exit 2."""
    import shutil
    from litelm_edge.pipeline import checkpoint as ckpt
    one_line_error(cli("build", "--target", "x86", "--checkpoint", tmp_path / "none", "--out", tmp_path / "a",
                       check=False),
                   "not found")
    bad = tmp_path / "c"
    shutil.copytree(ckpt.resolve(tiny_run), bad)
    with open(bad / "model.safetensors", "r+b") as f:  # inside the last tensor's data: still parses
        f.seek(-64, 2)
        f.write(bytes(64))
    one_line_error(cli("generate", "--checkpoint", bad, check=False),
                   f"checkpoint '{bad}': model.safetensors does not match its sha256 (corrupt)")


def test_bench_check_exits_1_on_a_failed_threshold(x86_fp32, tmp_path):
    """`bench --check`: exit 1 when a threshold fails, 0 when all pass; the report says which."""
    import shutil
    from litelm_edge import manifest
    quick = ["--reps", "1", "--warmup", "0", "--prompt-len", "8", "--gen-len", "2", "--concurrency", "1",
             "--check"]
    for name, limit, code in (("slow", 1e-6, 1), ("fast", 1e6, 0)):
        art = tmp_path / name
        shutil.copytree(x86_fp32, art)
        m = json.loads((art / "manifest.json").read_text())
        manifest.write(art, dict(m, thresholds={"max_latency_ms": limit}))  # re-sealed: a valid artifact id
        r = cli("bench", art, *quick, check=False)
        assert r.returncode == code, r.stderr[-2000:]
        row = json.loads((art / "bench.json").read_text())["thresholds"]
        assert [(t["threshold"], t["pass"]) for t in row] == [("max_latency_ms", code == 0)]
        assert ("| max_latency_ms |" in r.stdout) and (("**FAIL**" in r.stdout) == (code == 1))


def test_malformed_toml(tmp_path, data_dir):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nn_layer = 2")
    one_line_error(cli("train", "--data", data_dir, "--out", tmp_path / "r", "--preset", bad, check=False),
                   "malformed TOML")


def test_unknown_set_key(tmp_path, data_dir):
    one_line_error(cli("train", "--data", data_dir, "--out", tmp_path / "r", "--set", "lerning_rate=1",
                       check=False),
                   "unknown key 'lerning_rate'")
    one_line_error(cli("train", "--data", data_dir, "--out", tmp_path / "r", "--set", "model.n_layer=two",
                       check=False),
                   "'n_layer' must be int")


def test_empty_corpus(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("\n\n  \n")
    one_line_error(cli("data", tmp_path / "in", "--out", tmp_path / "d", check=False), "empty corpus")


def test_bench_of_a_folder_that_is_no_artifact(tmp_path):
    one_line_error(cli("bench", tmp_path, check=False), "not a built artifact")


@pytest.mark.slow
def test_end_to_end_train_build_bench_generate(corpus, tmp_path):
    d, run, art = tmp_path / "d", tmp_path / "run", tmp_path / "art"
    cli("data", corpus, "--out", d, "--vocab", "512")
    sets = [a for s in TINY_SETS + ["max_steps=30", "eval_every=15", "batch_size=8", "block_size=64"] for a in ("--set", s)]
    r = cli("train", "--data", d, "--out", run, *sets)
    assert "val ppl" in r.stdout
    r = cli("build", "--target", "x86", "--checkpoint", run, "--out", art)
    assert "x86/int8" in r.stdout
    r = cli("bench", art, "--reps", "2", "--warmup", "1", "--gen-len", "16", "--prompt-len", "32",
            "--concurrency", "2")
    assert "| prefill 32 tokens" in r.stdout and "max_latency_ms" in r.stdout
    res = json.loads((art / "bench.json").read_text())
    assert res["schema"] == "litelm-edge-bench/3" and res["parity"]["ok"]
    assert (art / "bench.md").is_file() and (art / "bench.html").read_text().startswith("<!doctype html>")
    assert len(cli("generate", "--artifact", art, "--prompt", "KING:", "--max-new-tokens", "8").stdout) > len("KING:")
