"""The cleaning pipeline on datatrove's executors: one machine (LocalPipelineExecutor, tasks over
files, workers over cores) or a cluster (Slurm, Ray) with the same steps.

    stage 1 (tasks = shards of the files):   read + normalise -> filters -> exact dedup
                                             -> kept/RANK.jsonl.gz + MinHash signatures
    stage 2 (tasks = LSH bands):             signatures sorted and matched per band
    stage 3 (1 task):                        duplicate pairs -> clusters -> ids to remove
The tail (data_tokens.py) reads kept/ through datatrove's MinhashDedupFilter, one process.
Every stage streams: memory is bounded by a shard's signatures, not by the corpus.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from . import data_read as R
from ..config import UserError
from ..files import LOW_SPACE, free_bytes, is_disk_full


class CorpusReader(PipelineStep):
    """Files files[rank::world_size] -> normalised Documents; bad input counted and recorded."""
    name = "read"
    type = "📖 - READER"

    def __init__(self, files: list[str], cfg, problems_dir: Path):
        super().__init__()
        self.files, self.cfg, self.problems_dir = files, cfg, Path(problems_dir)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        problems, counts = R.Problems(), {}
        for f in self.files[rank::world_size]:
            utf8_before, bad_before, n = R.INVALID_UTF8[0], sum(problems.counts.values()), 0
            for where, raw in R.read_file(Path(f), self.cfg.text_field, self.cfg.doc_chars, problems):
                n += 1
                self.stat_update("bytes_in", value=len(raw.encode("utf-8", "replace")))
                text = R.normalize(raw, self.cfg.lower, counts)
                self.stat_update("bytes_normalised", value=len(text.encode()))
                yield Document(text=text, id=where)
            failed = n == 0 and sum(problems.counts.values()) > bad_before  # nothing usable, and why
            self.stat_update("files_failed" if failed else "files_read")
            self.stat_update("docs_in", value=n)
            self.stat_update("invalid_utf8_bytes", value=R.INVALID_UTF8[0] - utf8_before)
        for k, v in counts.items():
            self.stat_update(k, value=v)
        for k, v in problems.counts.items():
            self.stat_update(f"bad_{k}", value=v)
        self.problems_dir.mkdir(parents=True, exist_ok=True)
        (self.problems_dir / f"{rank:05d}.json").write_text(json.dumps(problems.items))


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows), bands * rows <= num_perm, whose S-curve P(s) = 1 - (1 - s^rows)^bands passes
    0.5 at the threshold (within 0.05), the steepest such (most hashes); else the closest."""
    cands = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    off = {c: abs(1 - (1 - threshold ** c[1]) ** c[0] - 0.5) for c in cands}
    near = [c for c in cands if off[c] <= 0.05]
    return max(near, key=lambda c: (c[0] * c[1], -off[c])) if near else min(cands, key=off.get)


def minhash_config(cfg):
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig
    bands, rows = lsh_params(cfg.near_dup_threshold, cfg.num_perm)
    return MinhashConfig(n_grams=cfg.ngram, num_buckets=bands, hashes_per_bucket=rows, seed=1,
                         hash_config=HashConfig(precision=64, hash_fc="sha1"))


def make_executor(cfg, pipeline, tasks: int, logs: Path, depends=None):
    """datatrove executor named by cfg.executor: local | slurm | ray (depends: Slurm only)."""
    if cfg.executor == "local":
        from datatrove.executor import LocalPipelineExecutor
        workers = min(tasks, cfg.workers or os.cpu_count() or 1)
        return quiet(LocalPipelineExecutor)(pipeline, tasks=tasks, workers=workers, logging_dir=str(logs),
                                            skip_completed=False, start_method="fork")
    if cfg.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor
        return SlurmPipelineExecutor(pipeline, tasks=tasks, time=cfg.slurm_time,
                                     partition=cfg.slurm_partition, logging_dir=str(logs), depends=depends,
                                     job_name=f"litelm-data-{logs.name}",
                                     venv_path=os.environ.get("VIRTUAL_ENV"), skip_completed=False)
    if cfg.executor == "ray":
        try:
            import ray  # noqa: F401  (datatrove's Ray executor needs the core package only)
        except ImportError as e:
            raise UserError("executor=ray needs Ray: pip install ray") from e
        from datatrove.executor.ray import RayPipelineExecutor
        # workers: tasks at once (-1: as many as the cluster's CPUs hold, not this host's cores).
        # No depends=: run_stages runs the stages in order (datatrove's chaining would poll an
        # incomplete dependency every 2 minutes forever, and ship it to every worker).
        return quiet(RayPipelineExecutor)(pipeline, tasks=tasks, workers=cfg.workers or -1,
                                          logging_dir=str(logs), skip_completed=False)
    raise UserError(f"unknown executor '{cfg.executor}', have: local, slurm, ray")


def quiet(executor_cls):
    """The executor with quiet_logs() applied in each task's process (a forked worker, or a Ray
    worker: a fresh process that receives this class by value)."""
    class Quiet(executor_cls):
        def _run_for_rank(self, rank, local_rank=0, node_rank=-1):
            quiet_logs()
            return super()._run_for_rank(rank, local_rank, node_rank)
    return Quiet


def quiet_logs():
    """datatrove logs each task to stderr; keep them in the logging folder only."""
    import functools
    import datatrove.executor.base as B
    import datatrove.executor.ray as Ry  # no Ray import here: the module imports it inside run()
    import datatrove.pipeline.dedup.minhash as M
    import datatrove.utils.logging as L
    from loguru import logger
    if not isinstance(M.tqdm, functools.partial):
        M.tqdm = functools.partial(M.tqdm, disable=True)  # stage 3's progress bar

    def file_only(logging_dir, rank, local_rank=0, node_rank=-1):
        logger.remove()
        f = logging_dir.open(f"logs/task_{rank:05d}.log", "w")

        def sink(msg):  # a log line that cannot be written (a full disk) is dropped: loguru would
            try:        # print a "Logging error" traceback per line; the stage's own write fails and says it
                f.write(msg)
                f.flush()
            except OSError:
                pass
        logger.add(sink, level="INFO", colorize=False)
        return f
    B.add_task_logger = Ry.add_task_logger = file_only  # Ray's task logs its own import of it
    L.setup_default_logger = logger.remove
    logger.remove()


def run_stages(files: list[Path], cfg, work: Path, log=print) -> dict:
    """Stages 1-3 on the configured executor; returns per-step stats of stage 1 and the config."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster
    from datatrove.pipeline.writers import JsonlWriter
    from .data_filters import ExactDedup, Signature, Words, quality_steps
    quiet_logs()
    mh = minhash_config(cfg)
    tasks = cfg.tasks or min(len(files), 64)
    steps = [CorpusReader([str(f) for f in files], cfg, work / "problems"),
             *quality_steps(cfg, work / "dropped"), ExactDedup(work / "dropped", cfg.samples)]
    stage1 = steps + [JsonlWriter(str(work / "kept"), output_filename="${rank}.jsonl", compression=None),
                      Signature(str(work / "sigs"), mh, language=Words())]
    e1 = make_executor(cfg, stage1, tasks, work / "logs" / "1-filter")
    e2 = make_executor(cfg, [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)],
                       mh.num_buckets, work / "logs" / "2-buckets", depends=e1)
    e3 = make_executor(cfg, [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)],
                       1, work / "logs" / "3-cluster", depends=e2)
    t0 = time.time()
    if cfg.executor == "slurm":  # sbatch chains the stages (depends=): the last one submits the others
        e3.run()
        wait(e3)
    else:
        with ray_session(cfg):
            for i, e in enumerate((e1, e2, e3), 1):
                e.run()
                check_complete(e, i)
                log(f"data stage {i}/3 done ({time.time() - t0:.0f} s)")
    return {"tasks": tasks, "steps": [s.name for s in steps],
            "stats": read_stats(work / "logs" / "1-filter", len(steps)),
            "minhash": {"bands": mh.num_buckets, "rows": mh.hashes_per_bucket, "ngram": mh.n_grams}}


@contextlib.contextmanager
def ray_session(cfg):
    """executor=ray: join the cluster at RAY_ADDRESS (or the one `ray start` runs on this machine),
    else start a Ray instance on this machine for the run and stop it after. Workers' output stays
    in the task logs (log_to_driver=False). A session already open (ray.init by the caller) is used."""
    if cfg.executor != "ray":
        yield
        return
    import ray
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(log_to_driver=False, logging_level="WARNING")
        except ConnectionError as e:  # an OSError, which the CLI would blame on a path
            raise UserError(f"{e}: check RAY_ADDRESS; a cluster with token authentication also needs "
                            "RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or ~/.ray/auth_token)") from e
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def check_complete(executor, stage: int):
    """Every task of the stage marked complete: Ray's executor only logs the tasks that failed."""
    missing = executor.get_incomplete_ranks(skip_completed=True)
    if missing:
        try:
            with executor.logging_dir.open(f"logs/task_{missing[0]:05d}.log", "r", errors="replace") as f:
                lines = f.read().strip().splitlines()
        except FileNotFoundError:
            lines = ["no log"]
        msg = (f"data stage {stage}: {len(missing)} of {executor.world_size} tasks did not complete; "
               f"task {missing[0]}: {lines[-1] if lines else 'empty log'}")
        where = getattr(executor.logging_dir, "path", None)  # a local folder (else a remote store)
        if is_disk_full(RuntimeError(msg)) or (where and free_bytes(Path(where)) < LOW_SPACE):
            raise OSError(errno.ENOSPC, msg)  # prepare's atomic_dir: `disk full writing <out>`
        raise RuntimeError(msg)


def wait(executor, every_s: float = 30):
    """Slurm returns at submission: wait until the last stage's tasks are all complete."""
    while executor.get_incomplete_ranks(skip_completed=True):
        time.sleep(every_s)


def read_stats(logs: Path, n_steps: int) -> list[dict]:
    """Summed counters of the first n_steps steps over every task's stats/RANK.json."""
    out = [{} for _ in range(n_steps)]
    for f in sorted((logs / "stats").glob("*.json")):
        for i, step in enumerate(json.loads(f.read_text())[:n_steps]):
            for k, v in step.get("stats", {}).items():
                total = v.get("total", v) if isinstance(v, dict) else v
                if isinstance(total, (int, float)):
                    out[i][k] = out[i].get(k, 0) + total
    return out
