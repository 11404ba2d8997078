"""The litelm-edge command line: each verb parses, calls one library function, prints.

Heavy libraries (torch, onnxruntime, TVM, LiteRT) are imported inside the library functions, so
`litelm-edge --help` stays fast and needs none of them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .backends import precisions_help
from .config import UserError, parse_sets, split_sets
from .devices.fleet import WORKERS
from .devices.remote_bench import RUN_TIMEOUT
from .devices.runner import EXIT_USER, Protocol

PROTO = Protocol()  # the bench protocol's defaults

REMOTE = click.option("--remote", "remotes", multiple=True, metavar="USER@HOST[:PORT]",
                      help="A device over SSH (user@host[:port] or ~/.ssh/config alias; repeatable).")
ACCEPT = click.option("--accept-new-host-key", "accept_new", is_flag=True,
                      help="Record a new host key in ssh's UserKnownHostsFile, else ~/.ssh/known_hosts.")
REMOTE_DIR = click.option("--remote-dir", "root",
                          help="Absolute folder on the device (default: its ~/.cache/litelm-edge).")

def _use_ssh_config(ctx, param, value):
    if value:  # read by remote.py wherever a connection is opened (push, bench, fleet threads)
        import os
        os.environ["LITELM_EDGE_SSH_CONFIG"] = str(Path(value).resolve())


SSH_CONFIG = click.option("--ssh-config", type=click.Path(exists=True, dir_okay=False), expose_value=False,
                          callback=_use_ssh_config, envvar="LITELM_EDGE_SSH_CONFIG",
                          help="ssh config to read instead of ~/.ssh/config, like ssh -F (e.g. the emulated "
                               "device's).")
SET = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                   help="Override a config key (repeatable).")
TOKENIZER = click.option("--tokenizer", type=click.Path(path_type=Path),
                         help="tokenizer.json for a checkpoint folder without one (an imported HF model).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="litelm-edge")
def cli():
    """Take a tiny language model from data to a measured deployment on edge devices."""


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--tokenizer", type=click.Path(path_type=Path),
              help="Existing tokenizer.json (else one is trained).")
@click.option("--vocab", default=4096, show_default=True, help="Vocabulary size when training a tokenizer.")
@click.option("--text-field", help="The .jsonl key / .parquet column of the text (default: text).")
@SET
def data(inputs, out, tokenizer, vocab, text_field, sets):
    """Normalise, filter, dedup (exact + MinHash), split and tokenise .txt/.jsonl/.parquet INPUTS,
    plain or .gz/.zst (files or folders; 'default' = bundled corpus). Writes data-report.md."""
    from .config import override
    from .pipeline.data import DataConfig, default_corpus, prepare
    inputs = [default_corpus() if i == "default" else i for i in inputs]
    sets = dict(parse_sets(sets), **({"text_field": text_field} if text_field else {}))
    prepare(inputs, out, tokenizer, vocab, override(DataConfig(), sets, "--set (data)"), log=click.echo)


@cli.group()
def tokenizer():
    """Byte-level BPE tokenizer."""


@tokenizer.command("train")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--vocab", default=4096, show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="tokenizer.json to write.")
def tokenizer_train(inputs, vocab, out):
    """Train a byte-level BPE tokenizer on INPUTS."""
    from .pipeline.data import DataConfig, expand_inputs, read_documents
    from .pipeline.tokenizer import train
    tok = train(read_documents(expand_inputs(inputs), DataConfig()), vocab)
    tok.save(out)
    click.echo(f"tokenizer with {tok.vocab_size} tokens -> {out}")


@cli.command("train")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Folder from `litelm-edge data`.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder (checkpoints, tb/).")
@click.option("--preset", default="tiny", show_default=True, help="Model preset in model/ (or a .toml path).")
@click.option("--resume", is_flag=True, help="Continue from the run folder's latest checkpoint.")
@SET
def train_cmd(data_dir, out, preset, resume, sets):
    """Train a model (DDP when launched with torchrun). --set model.n_layer=2 / --set max_steps=100."""
    from .config import override
    from .pipeline.model import preset as model_preset
    from .pipeline.train import TrainConfig, resume_settings, train
    model_sets, rest = split_sets(parse_sets(sets), "model")
    c = (resume and resume_settings(out, rest, model_sets, click.echo)) or override(TrainConfig(), rest, "--set (train)")
    s = train(data_dir, out, model_preset(preset, model_sets), c, resume)
    if s:
        click.echo(f"step {s['step']}: val loss {s['val_loss']:.4f}, val ppl {s['val_ppl']:.2f} -> {out}")


@cli.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint folder to write.")
def import_cmd(source, out):
    """A published model (a .gguf file, or a folder transformers saved) -> a checkpoint folder."""
    from .pipeline.importer import import_model
    r = import_model(source, out, log=lambda m: click.echo(m, err=True))
    click.echo(f"{r['model_type']}, {r['n_params'] / 1e6:.1f}M parameters, fp32, {r['seconds']:.1f} s -> "
               f"{r['checkpoint']}")


@cli.command()
@click.option("--target", required=True, help="Target name in targets/ (or a .toml path).")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Checkpoint or run folder.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Artifact folder to write.")
@click.option("--precision", help=f"{precisions_help()}; default: the target's.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path),
              help="Held-out data (default: the checkpoint's).")
@click.option("--tune", is_flag=True, help="TVM targets: pick the schedule's tile by benching on --remote.")
@click.option("--remote", "tune_remote", help="user@host[:port] of the device that --tune measures on.")
@TOKENIZER
@SET
def build(target, checkpoint, out, precision, data_dir, tune, tune_remote, tokenizer, sets):
    """Build a checkpoint for a target; fails when the artifact disagrees with torch."""
    from .flows.build import build as do_build
    if tune:
        if not tune_remote:
            raise UserError("--tune needs --remote user@host: the device is the tuner's runner")
        from .flows.tune import tune as do_tune
        m = do_tune(checkpoint, target, out, tune_remote, precision, data_dir, parse_sets(sets),
                    log=click.echo)
    else:
        m = do_build(checkpoint, target, out, precision, data_dir, parse_sets(sets), tokenizer=tokenizer)
    from .flows.build import describe
    click.echo(f"{m['target']}/{m['precision']}: {m['size_bytes'] / 1e6:.2f} MB, {describe(m['parity'])} -> "
               f"{out}")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@REMOTE
@ACCEPT
@REMOTE_DIR
@SSH_CONFIG
def push(artifact, remotes, accept_new, root):
    """Copy an artifact to devices: verified, atomic, skipping files already there."""
    from .devices.push import bar, push_to
    if not remotes:
        raise UserError("push needs --remote user@host[:port]")
    for address in remotes:
        label, r = push_to(address, artifact, accept_new, root, bar())
        click.echo(f"{label}: {len(r.sent)} files sent ({r.bytes_sent / 1e6:.2f} MB), "
                   f"{len(r.skipped)} already there, {r.seconds:.2f} s -> {r.remote_dir}")


@cli.command("bench")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--reps", default=PROTO.reps, show_default=True, help="Timed repetitions.")
@click.option("--warmup", default=PROTO.warmup, show_default=True)
@click.option("--prompt-len", default=PROTO.prompt_len, show_default=True)
@click.option("--gen-len", default=PROTO.gen_len, show_default=True)
@click.option("--concurrency", default=PROTO.concurrency, show_default=True,
              help="Sessions for the QPS figure.")
@click.option("--threads", type=int,
              help="Runtime threads per session (default: from the CPU affinity, the sessions and the model "
                   "size).")
@click.option("--baseline", type=click.Path(path_type=Path),
              help="bench.json of the fp32 build (energy reduction).")
@click.option("--report-dir", type=click.Path(path_type=Path),
              help="Where bench.json/.md/.html go (default: ARTIFACT).")
@click.option("--check", is_flag=True,
              help="Exit 1 when a threshold or parity fails (per device for a fleet).")
@click.option("--junit", type=click.Path(path_type=Path),
              help="Also write JUnit XML: a testcase per threshold and for parity.")
@click.option("-o", "--output", "fmt", type=click.Choice(["json", "csv", "md"]),
              help="Print one row per measurement with build and hardware columns (llama-bench's) instead of "
                   "the report.")
@REMOTE
@click.option("--inventory", type=click.Path(path_type=Path),
              help="devices.toml: a fleet of [[device]] name/address/target/notes.")
@ACCEPT
@REMOTE_DIR
@click.option("--timeout", default=RUN_TIMEOUT, show_default=True, help="Seconds the device runner may take.")
@click.option("--remote-python", "python", default="python3", show_default=True, help="Python on the device.")
@click.option("--install-runtime", is_flag=True, help="Install a missing runtime into a venv on the device.")
@click.option("--workers", default=WORKERS, show_default=True, help="Devices benchmarked at once.")
@SSH_CONFIG
def bench_cmd(artifact, reps, warmup, prompt_len, gen_len, concurrency, threads, baseline, report_dir, check,
              junit, fmt, remotes, inventory, **remote):
    """Benchmark a built artifact here, or on devices over SSH (--remote, --inventory)."""
    from .devices.bench import bench
    from .reports import report, rows
    proto = dict(reps=reps, warmup=warmup, prompt_len=prompt_len, gen_len=gen_len, concurrency=concurrency,
                 threads=threads)
    Protocol(**proto).check()  # one line naming the option, before the artifact is read
    if remotes or inventory:
        from .devices.fleet import bench_devices
        code, text = bench_devices(artifact, remotes, inventory, proto, baseline, report_dir or artifact,
                                   check, log=lambda m: click.echo(m, err=True), junit=junit, fmt=fmt,
                                   **remote)
        click.echo(text)
        sys.exit(code)
    r = bench(artifact, proto, baseline, log=lambda m: click.echo(m, err=True))
    report.write(r, report_dir or artifact, junit)
    click.echo(rows.render(fmt, [r]) if fmt else report.to_markdown(r))
    if check and not r["ok"]:
        sys.exit(1)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--plot", type=click.Path(path_type=Path), default=Path("compare.png"), show_default=True,
              help="Plot of the runs side by side (.png, .svg or .pdf).")
def compare(runs, plot):
    """Compare bench runs (bench.json files or folders), each against the first: mean ± stddev and ratios."""
    from .reports.compare_runs import compare as do_compare
    click.echo(do_compare(list(runs), plot), nl=False)


@cli.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Generate with torch from a checkpoint.")
@click.option("--artifact", type=click.Path(path_type=Path),
              help="Generate through a built artifact's runtime.")
@click.option("--prompt", default="ROMEO:", show_default=True)
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int)
@click.option("--seed", default=0, show_default=True)
def generate(checkpoint, artifact, prompt, max_new_tokens, temperature, top_k, seed):
    """Let the model speak: greedy or sampled text from a checkpoint or an artifact."""
    from .pipeline.generate import generate as gen
    if bool(checkpoint) == bool(artifact):
        raise UserError("pass exactly one of --checkpoint or --artifact")
    click.echo(gen(checkpoint or artifact, prompt, max_new_tokens, temperature, top_k, seed,
                   from_artifact=bool(artifact), log=lambda m: click.echo(m, err=True)))


@cli.command()
@click.argument("recipe")
@click.option("--until", type=click.Choice(["train"]),
              help="Stop after this step (CI trains once, then builds per device).")
@SET
def run(recipe, until, sets):
    """Run a recipe: data -> train -> [compress] -> build -> bench -> report, with its [gates] (e.g. `run quickstart`)."""
    from .flows.run import run_recipe
    r = run_recipe(recipe, parse_sets(sets), log=click.echo, until=until)
    if until:
        click.echo(f"checkpoint {r['checkpoint']}, data {r['data']}")


@cli.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Checkpoint or run folder (torch).")
@click.option("--artifact", type=click.Path(path_type=Path), help="Built artifact (through its runtime).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path),
              help="Folder from `litelm-edge data` (default: the checkpoint's).")
@TOKENIZER
@SET
def eval_cmd(checkpoint, artifact, data_dir, tokenizer, sets):
    """Validation perplexity of a checkpoint or of a built artifact (--set windows=32 window_len=128)."""
    from .pipeline.eval import evaluate
    r = evaluate(checkpoint, artifact, data_dir, parse_sets(sets), tokenizer)
    click.echo(f"{r['what']} ({r['runtime']}): val ppl {r['ppl']:.3f} over {r['tokens']} tokens "
               f"in {r['windows']} windows, {r['seconds']:.1f} s -> {r['path']}")


@cli.command()
@click.argument("method")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Checkpoint or run folder (distill: the teacher).")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Folder from `litelm-edge data`.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder to write.")
@SET
def compress(method, checkpoint, data_dir, out, sets):
    """Compress: METHOD is qat, prune, distill or share; train.* keys edit the fine-tuning."""
    from .pipeline.compress import compress as do_compress
    r = do_compress(method, checkpoint, data_dir, out, parse_sets(sets),
                    log=lambda m: click.echo(m, err=True))
    click.echo(f"{method}: {r['params_before']:,} -> {r['params_after']:,} params, val ppl {r['ppl_before']:.2f} -> "
               f"{r['ppl_after']:.2f}, {r['seconds']:.0f} s -> {r['checkpoint']}")
    if r.get("note"):
        click.echo(f"note: {r['note']}")


@cli.group()
def ci():
    """CI artifacts per device (tools/ci_device.py writes the bundles; see docs/ci.md)."""


@ci.command("report")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for summary.json/.md/.html.")
@click.option("--check", is_flag=True, help="Exit 1 when a bench failed on any device.")
def ci_report(bundles, out, check):
    """Verify every bundle under BUNDLES against its manifest and compare all devices in one summary."""
    from .flows.ci import summarize
    code, md = summarize(list(bundles), out)
    click.echo(md)
    sys.exit(code if check else 0)


@cli.command()
def targets():
    """List the targets in targets/."""
    from .config import data_dir, read_toml
    for p in sorted(data_dir("targets").glob("*.toml")):
        t = read_toml(p).get("target", {})
        click.echo(f"{p.stem:12s} {t.get('backend', '?'):8s} {t.get('description', '')}")


EXTRAS = {"torch": "train", "safetensors": "train", "tokenizers": "train", "tensorboard": "train",
          # gguf-py: the gguf backend's host module, so its extra names it; the backends' own: each
          # Backend record's extra and host_modules
          "transformers": "import", "accelerate": "import"}


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The one line for a module of an extra that is not installed (a base install has none)."""
    from . import backends
    top = (e.name or "").split(".")[0]
    extra = EXTRAS.get(top) or next((b.extra for b in map(backends.load, backends.names())
                                     if top in b.host_modules), None)
    if extra is None:
        return None
    fix = f"pip install 'litelm-edge[{extra}]'"
    if top == "torch":  # a resolved torch is a multi-GB CUDA build: the CPU one first
        fix = "pip install torch --index-url https://download.pytorch.org/whl/cpu && " + fix
    return f"{top} is not installed (this command needs it): {fix}"


def crash_log(exc: BaseException) -> Path:
    """The traceback of an unexpected error, kept for a bug report instead of shown."""
    import time
    import traceback
    from .config import cache_dir
    path = cache_dir() / "logs" / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"litelm-edge {' '.join(sys.argv[1:])}\n" + "".join(traceback.format_exception(exc)))
    except OSError:
        path = Path("(could not write the log)")
    return path


def thread_error(args):
    """A worker thread's exception (TensorBoard's event writer on a full disk): its owner raises it
    again and main() says it in one line; the traceback goes to the crash log, not the terminal."""
    from .files import is_disk_full
    if not is_disk_full(args.exc_value):
        crash_log(args.exc_value)


def fail(msg: str, code: int):
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def main(argv=None):
    """Every error a user can meet ends as one line and an exit code: 2 bad input, 3 device or
    transport, 130 interrupted, 70 a bug here (the traceback goes to a log file)."""
    # before torch (and its OpenMP) loads: waiting workers sleep rather than spin, so a busy
    # neighbour costs a fair share instead of a collapse (litelm_edge/pipeline/train.py, cpu_threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import threading
    threading.excepthook = thread_error
    from .devices.runner import RuntimeMissing
    try:
        cli.main(args=argv, standalone_mode=False)
    except UserError as e:
        fail(str(e).replace("\n", " "), getattr(e, "exit_code", EXIT_USER))
    except RuntimeMissing as e:
        fail(str(e), EXIT_USER)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except ModuleNotFoundError as e:
        line = missing_extra(e)
        fail(line, EXIT_USER) if line else fail(f"internal error ({e}); traceback in {crash_log(e)}", 70)
    except OSError as e:
        if e.errno == 28:  # ENOSPC outside an atomic write (those say their path themselves)
            fail(f"disk full writing {e.filename or '(no space left on device)'}: free space and retry",
                 EXIT_USER)
        fail(f"{e.strerror or e} {f'({e.filename})' if e.filename else ''}: check the path and its "
             "permissions", EXIT_USER)
    except Exception as e:  # a bug: one line here, the traceback in the log
        fail(f"internal error ({type(e).__name__}: {str(e)[:200]}); traceback in {crash_log(e)}", 70)


if __name__ == "__main__":
    main()
