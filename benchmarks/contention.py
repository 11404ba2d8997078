"""Noisy neighbours: training step time and decode tokens/s, alone and beside one busy process.

Each configuration runs in its own Python (OpenMP reads its wait policy when torch loads), rounds
interleaved, with and without one competing `while 1: pass` process. "before" is what the code did
(torch's and ORT's default threads, spinning workers); "after" is what it does now (threads from
the CPU affinity, OpenMP workers that sleep, ORT spinning only on idle cores).

    python benchmarks/contention.py --artifact ART [--steps 10] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TRAIN = """
import sys, time, torch
from litelm_edge.pipeline.model import Transformer, preset
from litelm_edge.pipeline.train import cpu_threads
if sys.argv[2] == "after":
    torch.set_num_threads(cpu_threads())
torch.manual_seed(0)
m = Transformer(preset("tiny")); opt = torch.optim.AdamW(m.parameters(), 1e-3)
x = torch.randint(0, 4096, (16, 128))
def step():
    _, loss = m(x, x); opt.zero_grad(); loss.backward(); opt.step()
step()
t = time.perf_counter()
for _ in range(int(sys.argv[1])):
    step()
print((time.perf_counter() - t) / int(sys.argv[1]) * 1e3)
"""

DECODE = """
import json, sys, numpy as np
from pathlib import Path
from litelm_edge.devices.runner import open_runtime, time_decode, choose_threads, choose_spin
art = Path(sys.argv[1]); m = json.loads((art / "manifest.json").read_text())
if sys.argv[2] == "after":
    t = choose_threads(m); rt = open_runtime(art, m, t, choose_spin(t))
else:
    rt = open_runtime(art, m, None)  # ORT's defaults: a thread per core, spinning
prompt = np.arange(64) % m["model"]["vocab_size"]
time_decode(rt, prompt, 8)
print(np.median([1e3 / np.mean(time_decode(rt, prompt, 64)) for _ in range(3)]))
"""


def run(code: str, args: list, policy: str) -> float:
    env = dict(os.environ)
    if policy == "after":
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # what litelm-edge's CLI sets before torch loads
    else:
        env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([sys.executable, "-c", code, *map(str, args), policy], capture_output=True,
                         text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", type=Path, help="an x86 artifact for the decode figures")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    res = {}
    for _ in range(a.rounds):
        for busy in (False, True):
            hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"]) if busy else None
            try:
                time.sleep(0.5 if busy else 0)
                for policy in ("before", "after"):
                    res.setdefault(("train ms/step", policy, busy), []).append(run(TRAIN, [a.steps], policy))
                    if a.artifact:
                        res.setdefault(("decode tok/s", policy, busy), []).append(run(DECODE, [a.artifact], policy))
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
    load = os.getloadavg()[0]
    print(f"{len(os.sched_getaffinity(0))} CPUs, 1-min load {load:.1f} at the end; {a.rounds} rounds, min / "
          "median / max")
    print("| figure | policy | alone | beside one busy process | ratio |\n|---|---|---|---|---|")
    def fmt(xs):
        return " / ".join(f"{x:,.0f}" for x in (min(xs), np.median(xs), max(xs)))

    for (fig, policy, busy), v in res.items():
        if busy:
            q, c = np.median(res[(fig, policy, False)]), np.median(v)
            print(f"| {fig} | {policy} | {fmt(res[(fig, policy, False)])} | {fmt(v)} | "
                  f"{max(q, c) / min(q, c):.2f}x |")
    print(json.dumps({" ".join(map(str, k)): v for k, v in res.items()}))


if __name__ == "__main__":
    main()
