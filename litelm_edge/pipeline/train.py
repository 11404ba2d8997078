"""train: AdamW, cosine schedule with warmup, grad accumulation and clipping, AMP on GPU, DDP.

Single process:  litelm-edge train --data DIR --out RUN
DDP:             torchrun --nproc_per_node=N -m litelm_edge.cli train --data DIR --out RUN
The run folder holds step checkpoints (ckpt-000500/), `latest`, and TensorBoard scalars (tb/).
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import UserError


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences per micro-batch per process
    block_size: int = 128  # tokens per sequence
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 600  # optimizer steps
    lr: float = 3e-3  # peak learning rate (small models take a high one)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    warmup_steps: int = 50  # linear warmup from 0
    weight_decay: float = 0.1  # AdamW, on matrices only (not norms)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    eval_every: int = 200  # steps between validation + checkpoint
    eval_batches: int = 16  # micro-batches averaged for the validation loss
    keep_checkpoints: int = 2  # step checkpoints kept in the run folder
    seed: int = 1337
    dtype: str = "auto"  # auto: bf16 (or fp16) autocast on GPU, fp32 on CPU; or fp32/bf16/fp16
    device: str = "auto"  # auto: cuda when available, else cpu
    threads: int = 0  # CPU: torch intra-op threads per process; 0 = this process's CPUs / local processes

    def validate(self):
        from ..config import at_least
        at_least(self, batch_size=1, block_size=1, grad_accum=1, max_steps=0, warmup_steps=0, eval_every=1,
                 eval_batches=1, keep_checkpoints=1, lr=0.0, min_lr_ratio=0.0, weight_decay=0.0,
                 grad_clip=0.0)
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"'dtype' must be auto, fp32, bf16 or fp16, got {self.dtype!r}")


def lr_at(step: int, c: TrainConfig) -> float:
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps
    progress = min(1.0, (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps))
    return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Batches:
    """Random windows of a token memmap (nanoGPT's get_batch), seeded per process."""

    def __init__(self, path: Path, block: int, batch: int, seed: int):
        from .data import token_memmap
        self.data = token_memmap(path)  # uint16 or uint32, as meta.json says
        if len(self.data) <= block + 1:
            raise UserError(f"{path} has {len(self.data)} tokens, fewer than one block of {block + 1}: "
                            "use more text or --set train.block_size=N")
        self.block, self.batch = block, batch
        self.rng = np.random.default_rng(seed)

    def sample(self, device, starts=None):
        import torch
        if starts is None:
            starts = self.rng.integers(0, len(self.data) - self.block - 1, self.batch)
        x = np.stack([self.data[s:s + self.block] for s in starts]).astype(np.int64)
        y = np.stack([self.data[s + 1:s + 1 + self.block] for s in starts]).astype(np.int64)
        return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def fixed_starts(self, n: int):
        """Evenly spaced windows: the same validation set at every evaluation."""
        return np.linspace(0, len(self.data) - self.block - 1, n * self.batch).astype(int).reshape(n, self.batch)


def cpu_threads(world: int = 1) -> int:
    """The CPUs this process may run on (its affinity, not the machine's cores), shared by the local
    DDP processes. OpenMP's waiting workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, set by
    the CLI before torch loads): on 2 CPUs at load ~20, spinning workers that wait for a descheduled
    sibling made a step 6-7x slower than sleeping ones (docs/x86-speed.md)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world))))


def setup_device(c: TrainConfig):
    import torch
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    dev = c.device if c.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if ddp:
        import torch.distributed as dist
        dist.init_process_group("nccl" if dev == "cuda" else "gloo")
        if dev == "cuda":
            dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(dev)
    if not dev.startswith("cuda"):
        torch.set_num_threads(c.threads or cpu_threads(world))
    dtype = c.dtype
    if dtype == "auto":
        dtype = "fp32" if not dev.startswith("cuda") else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return dev, dtype, ddp, rank, world


def evaluate(model, val: Batches, n: int, device, amp) -> float:
    import torch
    model.eval()
    losses = []
    with torch.no_grad():
        for starts in val.fixed_starts(n):
            with amp:
                _, loss = model(*val.sample(device, starts))
            losses.append(loss.item())
    model.train()
    return float(np.mean(losses))


def make_optimizer(model, c: TrainConfig, device: str):
    import torch
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), fused=device.startswith("cuda"))


def _resume_state(run: Path):
    """(model, optimizer state, training dict) of the run's latest checkpoint, or None."""
    from . import checkpoint as ckpt
    if not (run / "latest").is_file():
        return None
    p = ckpt.resolve(run)
    model, _, training = ckpt.load(p)
    if not (p / "optimizer.pt").is_file():
        raise UserError(f"{p} has no optimizer.pt: it cannot be resumed (start a new run folder)")
    import torch
    return model, torch.load(p / "optimizer.pt", weights_only=False), training


def resume_settings(run, train_sets: dict, model_sets: dict, log=print) -> TrainConfig | None:
    """The run's own TrainConfig (from its latest training.json) with --set applied; each --set that
    changes a saved setting is stated. None when the run has no checkpoint yet (a fresh start)."""
    from dataclasses import fields
    from . import checkpoint as ckpt
    from ..config import override
    run = Path(run)
    if not (run / "latest").is_file():
        return None
    p = ckpt.resolve(run, need_tokenizer=False)
    training = json.loads((p / "training.json").read_text()) if (p / "training.json").is_file() else {}
    saved = training.get("train_config")
    if not isinstance(saved, dict):
        raise UserError(f"{p}/training.json records no train_config: this run cannot be resumed with its own "
                        "settings (start a new run folder)")
    known = {f.name for f in fields(TrainConfig)}
    base = override(TrainConfig(), {k: v for k, v in saved.items() if k in known},
                    f"{p}/training.json train_config")
    c = override(base, train_sets, "--set (train)")
    for k in train_sets:
        if getattr(c, k) != getattr(base, k):
            log(f"resume: --set {k}={getattr(c, k)} changes the run's {k} (was {getattr(base, k)})")
    cfg, _ = ckpt.read_config(p)
    asked = override(cfg, model_sets, "--set model.*")
    for k, v in model_sets.items():
        if getattr(asked, k) != getattr(cfg, k):
            raise UserError(f"--set model.{k}={v}: the run's model has {k} = {getattr(cfg, k)} and --resume "
                            "cannot change it: drop the --set, or train into a new --out folder")
    return c


def _start(run: Path, resume: bool, tok, model_cfg, model, log):
    """-> (model, optimizer state or None, step, history, summary): the run's latest checkpoint
    when resuming one, else `model` (or a new one of model_cfg) at step 0."""
    from .model import Transformer
    state = _resume_state(run) if resume else None
    if resume and state is None:
        log(f"no checkpoint in {run} to resume: starting fresh")
    if state:
        model, opt_state, prev = state
        return model, opt_state, prev["step"], prev.get("history", []), prev
    if tok.vocab_size > model_cfg.vocab_size:
        raise UserError(f"tokenizer has {tok.vocab_size} tokens but the model {model_cfg.vocab_size}: "
                        f"--set model.vocab_size={tok.vocab_size}")
    return (model if model is not None else Transformer(model_cfg)), None, 0, [], {}


def _one_step(net, opt, scaler, amp, batches, loss_fn, c: TrainConfig, dev: str, ddp: bool,
              step: int, run: Path) -> float:
    """One optimizer step over c.grad_accum micro-batches (gradients synced on the last); -> train loss.
    A non-finite loss or gradient norm stops the run before the step (stop_if_nonfinite)."""
    import torch
    for micro in range(c.grad_accum):
        x, y = batches.sample(dev)
        sync = nullcontext() if (not ddp or micro == c.grad_accum - 1) else net.no_sync()
        with sync, amp:
            loss = loss_fn(net, x, y) / c.grad_accum
        scaler.scale(loss).backward()
    if c.grad_clip:
        scaler.unscale_(opt)
    gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), c.grad_clip or math.inf)  # inf: measure only
    train_loss = loss.item() * c.grad_accum
    # before the step: nan never reaches the weights (fp16's scaler skips inf gradients itself)
    stop_if_nonfinite(step, train_loss, float(gnorm) if not scaler.is_enabled() else 0.0, run, c)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)
    return train_loss


def train(data_dir, out, model_cfg, c: TrainConfig = TrainConfig(), resume: bool = False, model=None,
          loss_fn=None, extra: dict | None = None, log=print) -> dict:
    """Train (or continue training `model`) on a `litelm-edge data` folder; returns the summary.

    loss_fn(model, x, y) -> loss replaces the plain LM loss (distillation uses it); `extra` is
    merged into training.json (for example what a compression step did).
    """
    import torch
    from . import checkpoint as ckpt
    from ..reports.progress import bar as progress
    from .tokenizer import Tokenizer
    data_dir, run = Path(data_dir), Path(out)
    tok = Tokenizer.load(data_dir / "tokenizer.json")
    meta = json.loads((data_dir / "meta.json").read_text()) if (data_dir / "meta.json").is_file() else {}
    dev, dtype, ddp, rank, world = setup_device(c)
    torch.manual_seed(c.seed + rank)
    model, opt_state, step, history, summary = _start(run, resume, tok, model_cfg, model, log)
    model.to(dev).train()
    opt = make_optimizer(model, c, dev)
    if opt_state:
        opt.load_state_dict(opt_state["optimizer"])
    train_b = Batches(data_dir / "train.bin", c.block_size, c.batch_size, c.seed + 1000 * rank + step)
    val_b = Batches(data_dir / "val.bin", c.block_size, c.batch_size, 0)
    amp, scaler = _mixed_precision(dtype, dev)
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    loss_fn = loss_fn or (lambda m, x, y: m(x, y)[1])
    writer = _tensorboard(run / "tb") if rank == 0 else None
    t0, tokens = time.time(), 0
    # a line per 10 % off a terminal
    bar = progress(c.max_steps, "train", "step", initial=step, disable=rank != 0)
    while step < c.max_steps:
        lr = lr_at(step, c)
        for g in opt.param_groups:
            g["lr"] = lr
        train_loss = _one_step(net, opt, scaler, amp, train_b, loss_fn, c, dev, ddp, step + 1, run)
        step += 1
        tokens += c.batch_size * c.block_size * c.grad_accum * world
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}")
        _scalars(writer, step, train_loss=train_loss, train_lr=lr)
        if step % c.eval_every == 0 or step == c.max_steps:
            val_loss = evaluate(model, val_b, c.eval_batches, dev, amp)
            stop_if_nonfinite(step, val_loss, 0.0, run, c, "validation loss")
            history.append({"step": step, "train_loss": train_loss, "val_loss": val_loss})
            if rank == 0:
                _scalars(writer, step, val_loss=val_loss, val_ppl=math.exp(val_loss))
                summary = {"step": step, "train_loss": train_loss, "val_loss": val_loss,
                           "val_ppl": math.exp(val_loss), "history": history,
                           "data_dir": str(data_dir.resolve()),
                           "corpus_sha256": meta.get("corpus_sha256"), "train_config": asdict(c),
                           "elapsed_s": time.time() - t0, "tokens_seen_this_run": tokens, "device": dev,
                           "dtype": dtype, "world_size": world, **(extra or {})}
                name = f"ckpt-{step:06d}"
                ckpt.save(run / name, model, tok.to_str(), summary,
                          {"optimizer": opt.state_dict(), "step": step})
                ckpt.update_latest(run, name, c.keep_checkpoints)
                bar.write(f"step {step}: val loss {val_loss:.4f}, ppl {math.exp(val_loss):.2f}")
    _finish(bar, writer, ddp)
    return summary


def _mixed_precision(dtype: str, dev: str):
    """(autocast context, grad scaler): bf16/fp16 autocast on CUDA, else neither does anything."""
    import torch
    cuda = dev.startswith("cuda")
    amp = (torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])
           if dtype in ("bf16", "fp16") and cuda else nullcontext())
    return amp, torch.amp.GradScaler("cuda", enabled=dtype == "fp16" and cuda)


def _scalars(writer, step: int, **values: float):
    """TensorBoard scalars (rank 0 only: writer None elsewhere); train_loss is logged as train/loss."""
    for k, v in values.items() if writer else ():
        writer.add_scalar(k.replace("_", "/", 1), v, step)


def _finish(bar, writer, ddp: bool):
    import torch
    bar.close()
    if writer:
        writer.close()
    if ddp:
        torch.distributed.destroy_process_group()


def stop_if_nonfinite(step: int, loss: float, grad_norm: float, run: Path, c: TrainConfig,
                      what: str = "loss"):
    """A loss or gradient norm of nan or inf stops the run before it reaches the weights, in one line
    naming the step; the run's `latest` checkpoint (the last good one) stays as it was."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    latest = (run / "latest").read_text().strip() if (run / "latest").is_file() else None
    bad = f"{what} {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
    raise UserError(f"step {step}: {bad}: training stopped; "
                    + (f"the last good checkpoint is {run / latest}" if latest else "no checkpoint was written")
                    + f": lower train.lr (now {c.lr:g}) or set train.grad_clip, then resume or start again")


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError("tensorboard is not installed: pip install 'litelm-edge[train]'") from e
    return SummaryWriter(str(path))
