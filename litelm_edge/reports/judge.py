"""Judging a bench result: one row per threshold of the target, and the overall verdict.

A threshold is judged only on figures that can carry it. Speed (latency, throughput, energy
reduction) is judged only where the result comes from the device the target describes: an emulated
device (qemu) checks function, a host standing in for another architecture (an android artifact
benched on x86) measures the host, and a shared CI runner (GitHub-hosted: other jobs share its
CPUs) measures the runner, so all three report those rows as "not judged". A figure
that could not be obtained (energy without a baseline) is "not measured". Neither is a pass.
"""
from __future__ import annotations

from ..target import latency_percentile
SPEED = {"max_latency_ms", "min_inferences_per_s", "min_qps", "min_decode_tok_s", "min_energy_reduction"}
OPTIONS = {"latency_percentile"}  # keys of [thresholds] that tune a threshold rather than being one


def where(raw: dict, manifest: dict) -> str:
    """'device' (the target's own hardware), 'emulated' (qemu), 'host' (another architecture) or
    'hosted' (a shared CI runner: devices/bench.py shared_runner)."""
    if raw["device"].get("emulated"):
        return "emulated"
    if raw["device"].get("shared_runner"):
        return "hosted"
    arch = manifest.get("arch")
    return "host" if arch and raw["device"].get("machine") != arch else "device"


def _values(res: dict, pct: str, baseline: dict | None) -> dict:
    """threshold key -> a function giving (value, how it was measured); only the asked ones run."""
    pre, pro = res.get("prefill_ms", {}), res.get("protocol", {})
    runs = f"{pre.get('n')} prefills of {pro.get('prompt_len')} tokens after {pro.get('warmup')} warmup"
    q = res.get("qps", {})
    return {
        "max_latency_ms": lambda: (pre[pct], f"prefill {pct}, ms, of {runs}"),
        "min_inferences_per_s": lambda: (res["inferences_per_s"], f"1000 / mean prefill ms, of {runs}"),
        "min_qps": lambda: (q["qps"], f"{q.get('inferences')} prefills over {q.get('sessions')} concurrent sessions"),
        "max_size_mb": lambda: (res["size_mb"],
                                "sum of the artifact's file sizes in its manifest, decimal MB"),
        "min_decode_tok_s": lambda: (res["decode_tok_s"]["mean"],
                                     f"mean over {pro.get('reps')} reps of {pro.get('gen_len')} tokens with KV cache"),
        "min_energy_reduction": lambda: _energy_reduction(res, baseline),
    }


def _energy_reduction(res: dict, baseline: dict | None) -> tuple:
    mine, base = res["energy"]["j_per_inference"], baseline and baseline["energy"]["j_per_inference"]
    how = f"1 - J/inference ({res['energy'].get('how')}) / the baseline's"
    return (1 - mine / base if mine and base else None,
            how + (f" ({baseline['energy']['how']})" if baseline else ""))


def _row(key: str, limit, value, how: str, place: str) -> dict:
    row = {"threshold": key, "value": value, "limit": limit, "pass": None, "how": how, "note": ""}
    if value is None:
        row["note"] = "not measured: needs --baseline (the fp32 build's bench.json)" if key == "min_energy_reduction" \
            else "not measured"
    elif key in SPEED and place != "device":
        row["note"] = {"emulated": "not judged: emulated device (a function check, not a speed figure)",
                       "host": "not judged: measured on a host, not on the target's device",
                       "hosted": "not judged: a shared CI runner (GitHub-hosted), not the target's device"}[place]
    else:
        row["pass"] = bool(value <= limit if key.startswith("max_") else value >= limit)
    return row


def verdicts(res: dict, thresholds: dict, baseline: dict | None, place: str | None = None) -> list[dict]:
    """One row per threshold: value, limit, pass (True/False, or None when not measured or not judged)."""
    place = place or res.get("where", "device")
    pct = latency_percentile(thresholds)
    values = _values(res, pct, baseline)
    return [_row(k, limit, *(values[k]() if k in values else (None, "")), place)
            for k, limit in thresholds.items() if k not in OPTIONS]


def build_quality(res: dict) -> tuple[str, str, bool] | None:
    """The build's quality gate as the manifest recorded it: (figures, how and rule, passed), or
    None for an artifact built before the gate measured perplexity."""
    p = (res.get("manifest") or {}).get("parity") or {}
    if "ppl_ratio" not in p:
        return None
    figures = (f"{p['ppl_ratio']:.4f} ± {p['ppl_ratio_se']:.4f} / {p['mean_kl']:.4f} / "
               f"{p['top1_agreement']:.3f}")
    if d := p.get("decode"):  # manifests before 2026-12-07 have none
        figures += f"; decoded {d['ppl_ratio']:.4f} ± {d['ppl_ratio_se']:.4f} / {d['mean_kl']:.4f}"
    how = f"{p['how']}; {p['windows']} x {p['window_len']} tokens; rule {p['rule']}"
    return figures, how, bool(p["ok"])


def overall(parity_ok: bool, rows: list[dict]) -> str:
    """'fail' when parity or a judged threshold failed; 'pass' when every threshold was judged and
    passed; else 'not judged' (nothing failed, but something that the target asks was not judged)."""
    if not parity_ok or any(r["pass"] is False for r in rows):
        return "fail"
    return "pass" if all(r["pass"] is True for r in rows) else "not judged"


def verdict_line(res: dict) -> str:
    v = res.get("verdict") or ("pass" if res["ok"] else "fail")
    if v == "not judged":
        n = sum(r["pass"] is None for r in res["thresholds"])
        return f"Overall: NOT JUDGED (parity {'ok' if res['parity']['ok'] else 'FAILED'}; {n} threshold(s) not judged or not measured)"
    return f"Overall: {v.upper()}"
