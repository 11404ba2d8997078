"""Nothing ships wrong silently: each bad input of issue 12 gives exit 2 (3 for the device), one line
that names the problem and the fix, and writes or changes nothing."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_SETS, cli, recipe_toml
from fake_artifact import make_artifact
from x86_artifact import x86_artifact


def one_line(r, code, *needles):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def tree(d: Path) -> dict:
    """Every file under d with its bytes' hash and mtime: "nothing changed" means equal trees."""
    import hashlib
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


def copy_ckpt(tiny_run, dst: Path) -> Path:
    from litelm_edge.pipeline import checkpoint as ckpt
    shutil.copytree(ckpt.resolve(tiny_run), dst)
    return dst


def edit_json(path: Path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


@pytest.fixture(scope="module")
def art(tiny_run, data_dir, tmp_path_factory):
    return x86_artifact(tiny_run, data_dir, tmp_path_factory)


# 1. a checkpoint checked as a whole ------------------------------------------------------------

@pytest.mark.parametrize("edit, needles", [
    (lambda d: d.update(num_hidden_layers=1),
     ["num_hidden_layers is 1 but model.safetensors holds 2 layers"]),
    (lambda d: d.update(num_hidden_layers=3),
     ["num_hidden_layers is 3 but model.safetensors holds 2 layers"]),
    (lambda d: d.update(intermediate_size=96), ["mlp.", "(intermediate_size) implies [96, 64]"]),
    (lambda d: d.update(num_key_value_heads=4), ["k_proj", "num_key_value_heads"]),
    (lambda d: d.update(rope_theta=5e5, rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
     ["rope_theta = 500000.0 but training.json recorded 10000.0"]),
])
def test_config_that_does_not_describe_the_weights(tiny_run, data_dir, tmp_path, edit, needles):
    c = copy_ckpt(tiny_run, tmp_path / "c")
    edit_json(c / "config.json", edit)
    before = tree(tmp_path)
    line = one_line(cli("build", "--target", "x86", "--checkpoint", c, "--out", tmp_path / "art",
                        "--precision", "fp32", check=False), 2, *needles)
    assert "re-run train" not in line and "restore the config.json" in line
    one_line(cli("eval", "--checkpoint", c, "--data", data_dir, check=False), 2, *needles)
    assert tree(tmp_path) == before and not (tmp_path / "art").exists()


# 2. is tests/test_hf_import.py; 3. misspelt keys --------------------------------------------------

def target_toml(tmp_path, text: str) -> Path:
    src = (Path(__file__).parent.parent / "targets" / "x86.toml").read_text()
    p = tmp_path / "board.toml"
    p.write_text(text(src))
    return p


@pytest.mark.parametrize("text, needles", [
    (lambda s: s.replace("max_latency_ms", "max_latncy_ms"),
     ["unknown key 'max_latncy_ms'", "did you mean 'max_latency_ms'"]),
    (lambda s: s.replace("[thresholds]", "[threshold]"),
     ["unknown table 'threshold'", "did you mean 'thresholds'"]),
    (lambda s: s.replace("\nprecision = ", "\nprecison = "),
     ["unknown key 'precison'", "did you mean 'precision'"]),
    (lambda s: s.replace("idle_w = 10.0", "idle_w = -1.0"), ["'idle_w' must be >= 0"]),
    (lambda s: s + "\n[litert]\nthreads = 2\n", ["unknown table 'litert'"]),
])
def test_target_toml_is_strict(tiny_run, tmp_path, text, needles):
    p = target_toml(tmp_path, text)
    r = cli("build", "--target", p, "--checkpoint", tiny_run, "--out", tmp_path / "art", check=False)
    one_line(r, 2, *needles)
    assert not (tmp_path / "art").exists()


def test_build_set_of_a_key_no_backend_has(tiny_run, tmp_path):
    one_line(cli("build", "--target", "x86", "--checkpoint", tiny_run, "--out", tmp_path / "a", "--set",
                 "build.anything=1", check=False), 2, "unknown key 'anything' in --set for the ort backend")
    from litelm_edge import backends
    from litelm_edge.config import UserError
    litert = backends.load("litert")
    with pytest.raises(UserError, match="unknown key 'thread' .*did you mean 'threads'"):
        backends.resolve(litert, {}, {"build.thread": "2"})
    s = backends.resolve(litert, {"threads": 3, "windows": "64"}, {"build.threads": "2",
                                                                   "litert.capacity": "128",
                                                                   "prefill_len": "32"})
    assert (s.threads, s.capacity, s.prefill_len, s.windows) == (2, 128, 32, "64")  # --set over the table
    assert not (tmp_path / "a").exists()


def recipe(tmp_path, corpus) -> str:
    return recipe_toml(tmp_path / "work", corpus, "max_steps = 2", "fp32")


@pytest.mark.parametrize("edit, needles", [
    (lambda s: s.replace("precision =", "precison ="),
     ["[build]", "unknown key 'precison'", "did you mean 'precision'"]),
    (lambda s: s.replace("vocab =", "vocabulary ="),
     ["[data]", "unknown key 'vocabulary'", "did you mean 'vocab'"]),
    (lambda s: s.replace('targets = ["x86"]\n', ""), ["[build] needs 'targets'"]),
    (lambda s: s.replace('targets = ["x86"]', 'targets = ["x68"]'), ["unknown target 'x68'"]),
    (lambda s: s + "[gates]\nmax_latncy_ms = 5\n", ["[gates]", "did you mean 'max_latency_ms'"]),
    (lambda s: s + "[[compress]]\nmethod = \"prunе\"\n", ["unknown method"]),
    (lambda s: s + "[[compress]]\nmethod = \"prune\"\nset = { fnn = 0.5 }\n", ["did you mean 'ffn'"]),
    (lambda s: s.replace("max_steps = 2", "eval_every = 0"), ["'eval_every' must be >= 1"]),
    (lambda s: s.replace("max_steps = 2", "\"model.n_kv_head\" = 0"), ["'n_kv_head' must be >= 1"]),
    (lambda s: s + "[bench]\nreps = 0\n", ["'reps' must be >= 1"]),
    (lambda s: s + "[compress]\nmethod = \"qat\"\n", ["array of tables"]),
])
def test_recipe_is_checked_whole_before_the_first_step(corpus, tmp_path, edit, needles):
    p = tmp_path / "r.toml"
    p.write_text(edit(recipe(tmp_path, corpus)))
    one_line(cli("run", p, check=False), 2, *needles)
    assert not (tmp_path / "work").exists()  # no step ran


def test_recipe_set_of_an_unknown_key(corpus, tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(recipe(tmp_path, corpus))
    one_line(cli("run", p, "--set", "build.anything=1", check=False), 2, "unknown key 'anything'", "[build]")
    one_line(cli("run", p, "--set", "bild.targets=x86", check=False), 2, "unknown key 'bild.targets'")
    assert not (tmp_path / "work").exists()


def test_model_preset_and_inventory_are_strict(tmp_path, data_dir):
    bad = tmp_path / "m.toml"
    bad.write_text("[model]\nn_layr = 2\n")
    one_line(cli("train", "--data", data_dir, "--out", tmp_path / "r", "--preset", bad, check=False), 2,
             "did you mean 'n_layer'")
    art = make_artifact(tmp_path / "art", {"decoder.onnx": 1000})
    inv = tmp_path / "devices.toml"
    for text, needle in [('device = "pi@host"\n', "no [[device]] tables"),
                         ('[[device]]\nname = "pi"\naddress = "pi@h"\nnotse = "x"\n', "did you mean 'notes'"),
                         ('[[device]]\nname = "pi"\naddress = "pi@h$(id)"\n', "characters OpenSSH refuses"),
                         ('[[devices]]\nname = "pi"\naddress = "pi@h"\n', "did you mean 'device'")]:
        inv.write_text(text)
        one_line(cli("bench", art, "--inventory", inv, check=False), 2, needle)
    assert not (tmp_path / "r").exists() and not (art / "fleet.json").exists()


# 4. every artifact verified against its manifest before any use -----------------------------------

@pytest.mark.parametrize("change, needle", [
    (lambda a: (a / "tokenizer.json").write_text((a / "tokenizer.json").read_text().replace('"<|im_end|>"', '"<|im_END|>"')),
     "tokenizer.json does not match its manifest sha256"),
    (lambda a: (a / "decoder.onnx").unlink(), "decoder.onnx is missing"),
    (lambda a: edit_json(a / "manifest.json", lambda m: m.update(version=99)), "artifact format version 99"),
])
def test_changed_artifact_is_refused_locally(art, data_dir, tmp_path, change, needle):
    a = tmp_path / "a"
    shutil.copytree(art, a)
    change(a)
    before = tree(a)
    one_line(cli("bench", a, "--reps", "1", check=False), 2, needle)
    one_line(cli("eval", "--artifact", a, "--data", data_dir, check=False), 2, needle)
    one_line(cli("generate", "--artifact", a, check=False), 2, needle)
    assert tree(a) == before and not (a / "bench.json").exists()


# 5. host names by OpenSSH's rules, before any connection ---------------------------------------------

def test_shell_characters_in_a_host_never_reach_a_proxycommand(tmp_path):
    home, marker = tmp_path / "home", tmp_path / "ran"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(f"Host *\n  ProxyCommand sh -c 'touch {marker}; echo %h > "
                                          f"{marker}'\n")
    art = make_artifact(tmp_path / "art", {"decoder.onnx": 1000})
    env = dict(os.environ, HOME=str(home))
    for address in ["pi@a$(touch${IFS}x)", "pi@a`id`", "pi@-oProxyCommand=id", "pi@a|id", "`id`@host"]:
        r = cli("push", art, "--remote", address, check=False, env=env)
        one_line(r, 2, "OpenSSH refuses")
        r = cli("bench", art, "--remote", address, check=False, env=env)
        one_line(r, 2, "OpenSSH refuses")
    assert not marker.exists()


# 6. tracebacks that became one line -------------------------------------------------------------

def test_zero_divisors_and_bad_ranges(tiny_run, data_dir, tmp_path):
    out = tmp_path / "r"
    one_line(cli("train", "--data", data_dir, "--out", out, "--set", "model.n_kv_head=0", check=False), 2,
             "'n_kv_head' must be >= 1")
    one_line(cli("train", "--data", data_dir, "--out", out, "--set", "model.n_kv_head=3", check=False), 2,
             "n_kv_head (3) must divide n_head (4)")
    one_line(cli("train", "--data", data_dir, "--out", out, "--set", "eval_every=0", check=False), 2,
             "'eval_every' must be >= 1")
    one_line(cli("eval", "--checkpoint", tiny_run, "--data", data_dir, "--set", "windows=0", check=False), 2,
             "'windows' must be >= 1")
    c = copy_ckpt(tiny_run, tmp_path / "c")
    edit_json(c / "config.json", lambda d: d.update(num_key_value_heads=0))
    one_line(cli("eval", "--checkpoint", c, "--data", data_dir, check=False), 2, "'n_kv_head' must be >= 1")
    assert not out.exists()


def test_tokenizer_without_endoftext(corpus, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["the king the queen"] * 10, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(tmp_path / "tok.json"))
    one_line(cli("data", corpus, "--out", tmp_path / "d", "--tokenizer", tmp_path / "tok.json", check=False),
             2, "has no <|endoftext|> token")
    assert not (tmp_path / "d").exists()


def test_unknown_error_is_one_line_and_a_log(tmp_path, monkeypatch, capsys):
    from litelm_edge import cli as C
    from litelm_edge.pipeline import eval as E
    monkeypatch.setenv("LITELM_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(E, "evaluate", lambda *a, **k: {}["boom"])
    with pytest.raises(SystemExit) as e:
        C.main(["eval", "--checkpoint", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 70 and len(err) == 1 and err[0].startswith("error: internal error (KeyError")
    log = Path(err[0].rsplit("traceback in ", 1)[1])
    assert log.is_file() and "Traceback" in log.read_text()


def test_missing_extra_gives_the_pip_command(tiny_run, tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "safetensors.py").write_text("raise ModuleNotFoundError(\"No module named 'safetensors'\", "
                                          "name='safetensors')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")]))
    one_line(cli("generate", "--checkpoint", tiny_run, check=False, env=env), 2,
             "safetensors is not installed", "pip install 'litelm-edge[train]'")


def test_missing_extra_names_each_backends_extra_and_survives_one_without(monkeypatch):
    """The error handler reads each Backend record's extra and host_modules: a backend whose
    record names no extra gives the plain internal-error line, never a crash inside the handler."""
    import dataclasses
    from litelm_edge import backends, cli as C
    assert C.missing_extra(ModuleNotFoundError("x", name="onnxruntime_genai")).endswith("'litelm-edge[x86]'")
    bare = dataclasses.replace(backends.load("tvm"), extra=None, host_modules=("tvm_ffi",))
    monkeypatch.setattr(backends, "load", lambda name: bare)
    assert C.missing_extra(ModuleNotFoundError("x", name="tvm_ffi")) is None


# 7. --resume restores the run's own settings; pipeline reuse keyed on every input --------------------

def test_resume_keeps_the_runs_settings(data_dir, tmp_path):
    from litelm_edge.pipeline import checkpoint as ckpt
    run = tmp_path / "run"
    sets = [a for s in TINY_SETS + ["max_steps=4", "eval_every=2", "batch_size=4", "block_size=32",
                                    "lr=0.001", "eval_batches=1"] for a in ("--set", s)]
    cli("train", "--data", data_dir, "--out", run, *sets)
    r = cli("train", "--data", data_dir, "--out", run, "--resume", "--set", "max_steps=6")
    assert "resume: --set max_steps=6 changes the run's max_steps (was 4)" in r.stdout
    t = ckpt.load(run)[2]
    assert t["step"] == 6 and t["train_config"]["batch_size"] == 4 and t["train_config"]["lr"] == 0.001
    assert t["train_config"]["block_size"] == 32
    before = tree(run)
    one_line(cli("train", "--data", data_dir, "--out", run, "--resume", "--set", "model.n_layer=3", check=False), 2,
             "the run's model has n_layer = 2 and --resume cannot change it")
    assert tree(run) == before


def test_pipeline_reuse_is_keyed_on_every_input(corpus, tmp_path, monkeypatch):
    from litelm_edge.flows import run as R
    from litelm_edge.pipeline import train
    from litelm_edge.flows.recipe import load_recipe
    p = tmp_path / "r.toml"
    p.write_text(recipe(tmp_path, corpus))
    inputs = [str(corpus)]
    key = lambda sets=None: R.data_key(load_recipe(str(p), sets)[1], inputs)  # noqa: E731
    assert key() == key() != key({"data.vocab": "1024"}) != key({"data.min_chars": "10"})
    k0 = key()
    (corpus / "plays.txt").write_text((corpus / "plays.txt").read_text() + "\nKING:\nOne more line of verse.\n")
    try:
        assert key() != k0  # the same file name with other content is another input
    finally:
        (corpus / "plays.txt").write_text((corpus / "plays.txt").read_text().rsplit("\nKING:\nOne more", 1)[0])
    assert key() == k0
    runs = []
    monkeypatch.setattr(train, "train", lambda data, run, *a, **k: runs.append(run) or {"step": 0})
    for sets in (None, None, {"train.model.n_layer": "2"}, {"train.lr": "0.01"}):
        R.step_train(load_recipe(str(p), sets)[1], tmp_path / "data-x", tmp_path / "work", lambda m: None)
    assert runs[0] == runs[1] and len({runs[0], runs[2], runs[3]}) == 3
    assert (tmp_path / "work" / "run").resolve() == runs[-1].resolve()


# 8. --install-runtime from package lists, for every runtime ------------------------------------------

def test_install_runtime_uses_each_runtimes_package_list(monkeypatch, tmp_path):
    from litelm_edge.devices import runner as D
    installed = []
    monkeypatch.setattr(D, "install_runtime", lambda pkgs: installed.append(pkgs))
    monkeypatch.setattr(D.os, "execv", lambda *a: (_ for _ in ()).throw(SystemExit(0)))
    monkeypatch.setattr(D, "VENV", str(tmp_path / "no-venv"))
    wanted = []
    import hashlib
    (tmp_path / "g").write_bytes(b"graph")  # the runtime's graph: listed and hashed (opened only then)
    files = {"g": {"sha256": hashlib.sha256(b"graph").hexdigest(), "size": 5}}
    graphs = {"files": files, "graphs": {"decoder": "g", "model": "g"}, "tvm": {"library": "g"}}
    for backend in ("tvm", "litert", "ort"):
        mod = D.runtime_module(backend)

        def absent(*a, _m=mod.MODULE, **kw):
            raise ImportError(f"No module named '{_m}'", name=_m)
        absent.spins = mod.Runtime.spins  # the contract's class attribute, read before the call
        monkeypatch.setattr(mod, "Runtime", absent)
        with pytest.raises(D.RuntimeMissing) as e:
            D.open_runtime(tmp_path, {"backend": backend, "runtime": backend, **graphs})
        assert e.value.packages == mod.PACKAGES and D.PIP + " ".join(mod.PACKAGES) in str(e.value)
        with pytest.raises(SystemExit):
            D.runtime_missing(e.value, ["art", "--install-runtime"], install=True)
        wanted.append(mod.PACKAGES)
    assert installed == wanted
    assert "apache-tvm==0.27.0.post1" in wanted[0] and "ai-edge-litert" in wanted[1]


# 9. threads follow the affinity; the report shows threads, affinity and CPU --------------------------

@pytest.mark.skipif(not shutil.which("taskset") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and 2+ CPUs to show the affinity is what counts")
def test_threads_follow_the_affinity(art, tmp_path):
    a = tmp_path / "a"
    shutil.copytree(art, a)
    r = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "litelm_edge.cli", "bench", str(a),
                        "--reps", "1", "--warmup", "0", "--gen-len", "4", "--prompt-len", "8",
                        "--concurrency", "1"],
                       capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stderr
    assert "Runtime threads: 1 (default: the CPUs in the process's affinity); CPU affinity: CPUs 0 of" in r.stdout
    res = json.loads((a / "bench.json").read_text())
    assert res["protocol"]["threads"] == 1 and res["device"]["affinity"] == "0" and res["device"]["cpu"]


# 10. requires-python admits no Python without tomllib ------------------------------------------------

def test_requires_python_has_tomllib():
    import tomllib
    meta = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"].replace(" ", "") == ">=3.11"


# 11. a build whose host runtime is missing says what to run before converting ---------------------------

def test_android_build_without_host_litert_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    from litelm_edge import cli as C
    from litelm_edge.backends.litert import build as litert_build, runtime as litert_runtime

    def absent():
        raise ImportError("ai_edge_litert is not installed", name="ai_edge_litert")
    monkeypatch.setattr(litert_runtime, "_interpreter_class", absent)
    monkeypatch.setattr(litert_build, "python",
                        lambda *a: pytest.fail("converted before checking the runtime"))
    with pytest.raises(SystemExit) as e:
        C.main(["build", "--target", "android", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "pip install ai-edge-litert" in err[0], err
    assert not (tmp_path / "a").exists()


def test_runtime_missing_anywhere_is_one_line(art, tmp_path, monkeypatch, capsys):
    from litelm_edge import cli as C
    from litelm_edge.devices import runner as D
    mod = D.runtime_module("ort")

    def absent(*a, **kw):
        raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
    absent.spins = True  # as the ORT Runtime declares
    monkeypatch.setattr(mod, "Runtime", absent)
    with pytest.raises(SystemExit) as e:
        C.main(["generate", "--artifact", str(art)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == ["error: onnxruntime is not installed: "
                                         f"{D.PIP}{' '.join(mod.PACKAGES)}"]


def test_a_missing_litert_names_the_phone_path_not_only_pip(tmp_path, monkeypatch):
    """On a phone the pip line cannot work (no Termux wheel of ai-edge-litert): the line says where
    it does run (issue 24: no instruction that cannot work)."""
    from litelm_edge.devices import runner as D
    mod = D.runtime_module("litert")

    def absent(*a, **kw):
        raise ImportError("No module named 'ai_edge_litert'", name="ai_edge_litert")
    absent.spins = False
    monkeypatch.setattr(mod, "Runtime", absent)
    monkeypatch.setattr(D.mf, "graph_path", lambda *a: tmp_path / "model.tflite")
    with pytest.raises(D.RuntimeMissing) as e:
        D.open_runtime(tmp_path, {"backend": "litert", "runtime": "litert"}, 1)
    assert str(e.value) == (f"ai_edge_litert is not installed: {D.PIP}ai-edge-litert numpy "
                            "(manylinux wheels only, none for Termux: on a phone run it in Debian through "
                            "proot-distro with --remote-python, docs/android.md)")


# 12. temp folders of killed runs; no usable SSH key ----------------------------------------------------

def test_stale_temporaries_of_killed_writers_are_removed(tiny_run, tmp_path):
    from litelm_edge.pipeline import checkpoint as ckpt
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    stale = run / f".ckpt-000090.tmp-{dead.pid}-abc"
    live = run / f".ckpt-000090.tmp-{os.getppid()}-abc"  # a writer that is still running
    for d in (stale, live):
        (d / "model.safetensors").parent.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"half")
    (run / f".latest.tmp-{dead.pid}-x").write_text("ckpt")
    model, tok, _ = ckpt.load(tiny_run)
    ckpt.save(run / "ckpt-000010", model, tok, {"step": 10})
    assert not stale.exists() and live.is_dir() and not (run / f".latest.tmp-{dead.pid}-x").exists()


def test_no_usable_ssh_key_says_so(sshd, ssh_home):
    from litelm_edge.devices.remote import Remote, RemoteError
    from sshd import trust
    trust(ssh_home, sshd)
    for f in ("id_ed25519", "id_ed25519.pub"):
        (ssh_home / ".ssh" / f).unlink()
    with pytest.raises(RemoteError, match="no usable SSH key .*ssh-keygen") as e:
        Remote(sshd.address)
    assert e.value.exit_code == 3
