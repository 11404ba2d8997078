"""Where one LiteRT signature call spends its time, op by op, and which ops XNNPACK does not take.

    python benchmarks/litert_profile.py ARTIFACT_DIR [--signature decode] [--threads 2] [--pos 100]
                                        [--reps 50] [--top 12] [--json OUT.json]

The Python interpreter of ai_edge_litert exposes no op profiler (TFLite's benchmark_model and its
`--enable_op_profiling` are C++ only), so each op is timed on its own: the op is cut out of the
signature's subgraph into a one-op model (same operator, options, constant buffers and
quantization), fed the values it saw in a real call (captured with experimental_preserve_all_tensors),
and invoked `reps` times through the default XNNPACK delegate with `threads` threads. An op that
XNNPACK takes shows a DELEGATE node in its one-op interpreter; one it refuses runs on TFLite's
built-in kernel, as it does in the whole graph. The whole call is timed three ways: the signature
runner (numpy in and out, as the runner calls it), Invoke alone (inputs already set) and the sum
of the ops, so the per-call cost outside the ops shows as the difference.

Times are of THIS machine (the host), not a phone; the median of `reps` after 5 warmup calls.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def _median_us(fn, reps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e6)


def signature_inputs(details: dict, pos: int) -> dict:
    """Inputs that exercise a call at position `pos`: token 1, positions pos.., zero caches/masks.
    An op's cost does not depend on these values, only on the shapes (and input_pos for slices)."""
    feed = {}
    for name, d in details.items():
        shape, dt = [int(s) for s in d["shape"]], np.dtype(d["dtype"])
        if name == "input_pos":
            feed[name] = np.arange(pos, pos + shape[0], dtype=dt)
        elif name == "tokens":
            feed[name] = np.ones(shape, dt)
        else:
            feed[name] = np.zeros(shape, dt)
    return feed


def capture(path: Path, sig: str, feed: dict) -> tuple[int, dict]:
    """Run the signature once on TFLite's built-in kernels keeping every tensor: {index: value}."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True)
    run = it.get_signature_runner(sig)
    run(**feed)
    sg = run._subgraph_index
    values = {}
    for i in range(it._interpreter.NumTensors(sg)):
        try:
            v = it.get_tensor(i, sg)
        except ValueError:
            continue
        if v is not None:
            values[i] = np.array(v)
    return sg, values


def _block_refs(t) -> list[int]:
    """Tensors a blockwise-quantized tensor points at (its scales, its zero points if any)."""
    d = t.quantization.details if t.quantization is not None else None
    return [i for i in (getattr(d, "scales", -1), getattr(d, "zeroPoints", -1)) if i >= 0]


def one_op_model(model, sg_index: int, op) -> tuple[bytes, list[int]]:
    """A model holding only `op` (its operator code, options, tensors, constant buffers and the
    scale tensors of blockwise weights). Returns the flatbuffer and the original indices of its
    non-constant inputs, in order."""
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.tools import flatbuffer_utils as fu
    sg = model.subgraphs[sg_index]
    used = [i for i in list(op.inputs) + list(op.outputs) if i >= 0]
    used += [r for i in used for r in _block_refs(sg.tensors[i])]
    used = list(dict.fromkeys(used))
    local = {i: n for n, i in enumerate(used)}
    buffers, tensors, live = [s.BufferT()], [], []
    for i in used:
        t = sg.tensors[i]
        data = model.buffers[t.buffer].data if t.buffer else None
        nt = copy.copy(t)  # buffer index (and blockwise scale indices) rewritten below
        if _block_refs(t):
            nt.quantization = copy.copy(t.quantization)
            d = nt.quantization.details = copy.copy(t.quantization.details)
            d.scales = local[d.scales]
            d.zeroPoints = local[d.zeroPoints] if d.zeroPoints >= 0 else d.zeroPoints
        b = s.BufferT()
        if data is not None and len(data) and i not in op.outputs:
            b.data = data
        elif i in op.inputs:
            live.append(i)
        buffers.append(b)
        nt.buffer = len(buffers) - 1
        tensors.append(nt)
    new_op = copy.copy(op)
    new_op.opcodeIndex = 0
    new_op.inputs = [local.get(i, -1) if i >= 0 else -1 for i in op.inputs]
    new_op.outputs = [local[i] for i in op.outputs]
    m = s.ModelT()
    m.version, m.operatorCodes, m.buffers = 3, [model.operatorCodes[op.opcodeIndex]], buffers
    g = s.SubGraphT()
    g.tensors, g.operators = tensors, [new_op]
    g.inputs, g.outputs = [local[i] for i in live], [local[i] for i in op.outputs]
    m.subgraphs = [g]
    return bytes(fu.convert_object_to_bytearray(m)), live


def time_op(content: bytes, values: list, threads: int, reps: int) -> tuple[float, bool]:
    """(median µs, delegated to XNNPACK) for a one-op model fed `values`."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=content, num_threads=threads)
    it.allocate_tensors()
    for d, v in zip(it.get_input_details(), values, strict=True):
        shape = [int(x) for x in d["shape"]]
        if v is None or v.size != int(np.prod(shape)):  # not captured (empty or scalar-shaped)
            v = np.zeros(shape)
        it.set_tensor(d["index"], v.astype(d["dtype"]).reshape(shape))
    nodes = range(it._interpreter.NumNodes())  # no local alias: invoke() refuses while one exists
    delegated = any(it._interpreter.NodeName(i) == "DELEGATE" for i in nodes)
    return _median_us(it.invoke, reps), delegated


def compiled_run_us(path: Path, sig: str, feed: dict, threads: int, reps: int) -> float | None:
    """One call through CompiledModel with every cache bound as both input and output, as the
    runner calls it (None without CompiledModel)."""
    try:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options
    except ImportError:
        return None
    cm = CompiledModel.from_file(str(path), options=Options(
        hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=threads)))
    ins = {n: cm.create_input_buffer_by_name(sig, n) for n in feed}
    for n, v in feed.items():
        ins[n].write(v)
    outs = {n: ins[n] if n in ins else cm.create_output_buffer_by_name(sig, n)
            for n in cm.get_signature_list()[sig]["outputs"]}
    return _median_us(lambda: cm.run_by_name(sig, ins, outs), reps)


def profile(art: Path, sig: str, threads: int, pos: int, reps: int) -> dict:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils as fu
    path = art / "model.tflite" if art.is_dir() else art
    it = Interpreter(model_path=str(path), num_threads=threads)
    run = it.get_signature_runner(sig)
    feed = signature_inputs(run.get_input_details(), pos)
    call_us = _median_us(lambda: run(**feed), reps)
    invoke_us = _median_us(lambda: it._interpreter.Invoke(run._subgraph_index), reps)
    compiled_us = compiled_run_us(path, sig, feed, threads, reps)
    sg_index, values = capture(path, sig, feed)
    model = fu.read_model_from_bytearray(bytearray(path.read_bytes()))
    rows = []
    for n, op in enumerate(model.subgraphs[sg_index].operators):
        content, live = one_op_model(model, sg_index, op)
        name = fu.opcode_to_name(model, op.opcodeIndex)
        ins = [values.get(i) for i in live]
        us, deleg = time_op(content, ins, threads, reps)
        w = [model.subgraphs[sg_index].tensors[i] for i in op.inputs if i >= 0]
        rows.append(dict(n=n, op=name, us=us, xnnpack=deleg,
                         shapes=[list(t.shape) for t in w], types=[int(t.type) for t in w]))
    return dict(artifact=str(art), signature=sig, threads=threads, pos=pos, reps=reps,
                call_us=call_us, invoke_us=invoke_us, compiled_us=compiled_us,
                ops_us=sum(r["us"] for r in rows), ops=rows)


def summary(p: dict, top: int) -> str:
    by = defaultdict(lambda: [0, 0.0, 0])
    for r in p["ops"]:
        b = by[(r["op"], r["xnnpack"])]
        b[0] += 1
        b[1] += r["us"]
    total = p["ops_us"]
    out = [f"{p['artifact']} [{p['signature']}] threads={p['threads']} pos={p['pos']} (host, median of {p['reps']})",
           f"  signature call (numpy in/out) {p['call_us'] / 1e3:8.2f} ms",
           f"  Invoke alone                  {p['invoke_us'] / 1e3:8.2f} ms",
           f"  CompiledModel, caches in place {p['compiled_us'] / 1e3 if p.get('compiled_us') else float('nan'):7.2f} ms",
           f"  sum of {len(p['ops'])} ops, each alone     {total / 1e3:8.2f} ms",
           f"  {'op':28s} {'XNNPACK':>7s} {'count':>5s} {'ms':>8s} {'share':>6s}"]
    for (op, x), (c, us, _) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        out.append(f"  {op:28s} {'yes' if x else 'NO':>7s} {c:5d} {us / 1e3:8.3f} {100 * us / total:5.1f}%")
    out.append(f"  top {top} single ops:")
    for r in sorted(p["ops"], key=lambda r: -r["us"])[:top]:
        out.append(f"    #{r['n']:<4d} {r['op']:24s} {r['us'] / 1e3:7.3f} ms  "
                   f"{'' if r['xnnpack'] else 'NOT XNNPACK '}{r['shapes']}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--signature", default="decode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pos", type=int, default=100, help="position of the profiled call")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    p = profile(a.artifact, a.signature, a.threads, a.pos, a.reps)
    print(summary(p, a.top))
    if a.json:
        a.json.write_text(json.dumps(p, indent=1))


if __name__ == "__main__":
    main()
