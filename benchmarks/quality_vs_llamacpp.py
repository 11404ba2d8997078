"""llama.cpp's quality on the same weights and text: `llama-perplexity --kl-divergence`, the figures
the build's quality gate reports (docs/quality.md), for llama.cpp's own quantisations.

    python benchmarks/quality_vs_llamacpp.py CKPT DATA_DIR [--tokenizer T] [--types q8_0,q4_0] [-c 128] [--chunks 64]

The held-out split (DATA_DIR/val.bin) is decoded with the checkpoint's tokenizer into a text file that
llama-perplexity tokenises again; CKPT is converted with llama.cpp's converter (f32: the base) and
quantised with llama-quantize. llama.cpp scores the second half of each -c window only (perplexity.cpp),
so its ratio compares with ours in kind, not token for token. Prints one JSON line per type.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is scripts, not a package
import _llamacpp as lc

FIGURES = {"ppl_ratio": r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([\d.]+)\s*±\s*([\d.]+)",
           "mean_kl": r"Mean    KLD:\s*([\d.]+)\s*±\s*([\d.]+)",
           "top1_agreement": r"Same top p:\s*([\d.]+)\s*±\s*([\d.]+) %"}


def val_text(data_dir: Path, tokenizer_json: str, out: Path) -> Path:
    from litelm_edge.pipeline.data import token_memmap
    from litelm_edge.pipeline.tokenizer import Tokenizer
    ids = token_memmap(data_dir / "val.bin")
    out.write_text(Tokenizer(tokenizer_json).decode([int(i) for i in ids]))
    return out


def perplexity(gguf: Path, text: Path, base: Path, ctx: int, chunks: int, make_base: bool) -> str:
    exe = lc.ensure_built()["root"] / "build" / "bin" / "llama-perplexity"
    if not exe.is_file():
        lc._run(["cmake", "--build", exe.parents[1], "-j", "2", "--target", "llama-perplexity"], print)
    # -nr: no weight repacking, so no AMX buffers (a VM that reports AMX may SIGILL on its tile loads)
    kl = ["--kl-divergence-base", base] + ([] if make_base else ["--kl-divergence"])
    cmd = [str(x) for x in (exe, "-m", gguf, "-f", text, "-c", ctx, "--chunks", chunks, "-t", 2, "-nr", *kl)]
    # llama.cpp logs its summary to stderr
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"llama-perplexity failed (exit {r.returncode}): "
                         f"{r.stderr.strip().splitlines()[-3:]}")
    return r.stdout + r.stderr


def parse(out: str) -> dict:
    r = {}
    for k, pat in FIGURES.items():
        m = re.search(pat, out)
        if m:
            v, se = float(m.group(1)), float(m.group(2))
            r[k], r[k + "_se"] = (v / 100, se / 100) if k == "top1_agreement" else (v, se)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: CKPT/tokenizer.json)")
    ap.add_argument("--types", default="q8_0,q4_0")
    ap.add_argument("-c", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "litelm-quality-llamacpp")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    tok = (a.tokenizer or a.ckpt / "tokenizer.json").read_text()
    text = val_text(a.data, tok, a.work / "val.txt")
    f32 = lc.convert(a.ckpt, "f32", a.work)
    base = a.work / "base.kld"
    perplexity(f32, text, base, a.c, a.chunks, make_base=True)  # the base's log-probs, saved
    for t in a.types.split(","):
        q = lc.quantize(f32, t)
        r = dict(parse(perplexity(q, text, base, a.c, a.chunks, make_base=False)), type=t,
                 size_mb=q.stat().st_size / 1e6,
                 how=f"llama-perplexity -c {a.c} --chunks {a.chunks} --kl-divergence vs f32, llama.cpp "
                     f"{lc.VERSION}")
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
