"""Read a .tflite file's constant tensors: where the bytes go, and what type the weights really are.

Needs only `ai_edge_litert` (its flatbuffer schema), so it runs in the main environment and in the
converter's venv alike. Tensor names come from litert-torch's module scopes ('...MLP_mlp/...',
'...Linear_q_proj;'); the token embedding is an unnamed constant, found by its (V, C) shape.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 9: "int8", 7: "int16",
          17: "int4", 10: "float64"}
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj", "g_proj")


def read_model(path: str | Path):
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError as e:
        raise ImportError("ai_edge_litert not installed: pip install 'litelm-edge[android]'") from e
    buf = Path(path).read_bytes()
    return schema.ModelT.InitFromPackedBuf(buf, 0), len(buf)


def constants(path: str | Path) -> list[dict]:
    """One row per constant buffer (deduplicated across signatures): name, dtype, shape, bytes."""
    model, _ = read_model(path)
    rows, seen = [], set()
    for sg in model.subgraphs:
        for t in sg.tensors:
            b = model.buffers[t.buffer]
            n = len(b.data) if b.data is not None else int(b.size or 0)
            if n == 0 or t.buffer in seen:
                continue
            seen.add(t.buffer)
            name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
            shape = [int(s) for s in t.shape]
            rows.append(dict(name=name, dtype=_TYPES.get(t.type, str(t.type)), shape=shape, bytes=n,
                             rotation=_is_rotation(t.type, shape, b.data)))
    return rows


def _is_rotation(dtype: int, shape: list[int], data) -> bool:
    """A normalised Hadamard matrix (ai-edge-quantizer's rotation, int8-had): float32, n x n, every
    entry +-1/sqrt(n). Not a weight: the weight checks leave it out."""
    if dtype != 0 or len(shape) != 2 or shape[0] != shape[1] or data is None:
        return False
    v = np.abs(np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32))
    return v.size == shape[0] ** 2 and bool(np.allclose(v, 1 / np.sqrt(shape[0]), rtol=1e-5))


def _part(row: dict, vocab_size: int) -> str:
    name = row["name"]
    if "MLP_mlp" in name:
        return "mlp"
    if any(p in name for p in _ATTN):
        return "attention"
    if "lm_head" in name:
        return "head"
    if vocab_size in row["shape"][:1]:
        return "embeddings"  # tied: the same buffer also serves the head
    return "other"


def breakdown(path: str | Path, vocab_size: int) -> dict:
    """Bytes per part {embeddings, attention, mlp, head, other}; 'other' absorbs the graph itself,
    so the parts sum to the file size exactly. Weights by dtype go in 'weights_by_dtype'."""
    _, size = read_model(path)
    parts = dict(embeddings=0, attention=0, mlp=0, head=0, other=0)
    by_dtype: dict[str, int] = {}
    for row in constants(path):
        parts[_part(row, vocab_size)] += row["bytes"]
        if len(row["shape"]) == 2 and row["bytes"] >= 4096:
            kind = f"{row['dtype']} rotation" if row["rotation"] else row["dtype"]
            by_dtype[kind] = by_dtype.get(kind, 0) + row["bytes"]
    parts["other"] += size - sum(parts.values())
    return dict(parts, total=size, weights_by_dtype=by_dtype)


def weight_dtypes(path: str | Path) -> set[str]:
    """Element types of the 2-D weight matrices (at least 4 KiB each; rotations are not weights)."""
    return {r["dtype"] for r in constants(path)
            if len(r["shape"]) == 2 and r["bytes"] >= 4096 and not r["rotation"]}
