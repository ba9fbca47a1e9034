"""Energy-efficiency plots from a results table (the CSV ``hwflow sweep`` writes).

Plots read results; they never run simulations. Each figure is written as PNG and SVG with
labelled axes in SI units. GPU markers are HBM-roofline *estimates* (:mod:`.gpus`), labelled so.

* ``efficiency``: tokens/J against tokens/s, every valid point, the Pareto front (points no
  other point beats on both), GPU estimates at the workload's own bytes per decode token.
* ``sparsity``: the best tokens/J over the swept hardware against the kept fraction N/M, one
  line per weight precision (needs a ``plan.sparsity`` column; skipped otherwise).
* ``bits``: the best tokens/J against weight bits, one line per N:M (needs ``plan.bits``).
* ``latency``: decode latency per token (ms) against context length, one line per run, from
  the ``curve`` JSON column when present, else min/avg/max markers at the decode range.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from hwflow.analysis.gpus import PRECISIONS, estimate, load_gpus, workload_bytes_per_token
from hwflow.errors import ConfigError, HwflowError

__all__ = ["pareto", "plot_results", "read_results"]

_NUM = {"tokens_per_s", "tokens_per_j", "decode_tokens_per_s", "decode_bytes_per_token"}


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results CSV, numbers parsed; ConfigError if it is not one."""
    p = Path(path)
    try:
        with p.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror})") from None
    if not rows or "status" not in rows[0]:
        raise ConfigError(f"{p}: not a results table of hwflow sweep (no 'status' column)")
    out = []
    for r in rows:
        d: dict[str, Any] = {}
        for k, v in r.items():
            try:
                d[k] = float(v) if v not in ("", None) and k not in ("hw", "plan", "model") else v
            except ValueError:
                d[k] = v
        out.append(d)
    return out


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points on the upper-right Pareto front (maximise both), by x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def _save(fig: Any, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=150 if ext == "png" else None, bbox_inches="tight")
        paths.append(p)
    return paths


def _label(r: dict[str, Any]) -> str:
    """The run's preset and plan names (a sweep's overrides are part of those names)."""
    return f"{r.get('hw', '?')} / {r.get('plan', '')}"


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _gpu_points(ok: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """GPU roofline estimates at the workload's own bytes per token: per model in the table,
    each GPU at each precision of :data:`~hwflow.analysis.gpus.PRECISIONS`, at the table's mean
    decode context of that model (prefill + decode / 2). Rows without a known model: none."""
    from hwflow.config import load_model

    out: list[tuple[str, Any]] = []
    models = sorted({r["model"] for r in ok if isinstance(r.get("model"), str) and r["model"]})
    for m in models:
        try:
            cfg = load_model(m)
        except HwflowError:
            continue
        ctx = statistics.mean(
            float(r.get("prefill") or 0) + float(r.get("decode") or 0) / 2
            for r in ok
            if r.get("model") == m
        )
        for g in load_gpus():
            for prec, (wb, kvb) in PRECISIONS.items():
                b = workload_bytes_per_token(cfg, wb, kvb, ctx)
                out.append((f"{g.name} {prec}", estimate(g, b)))
    return out


def plot_results(rows: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """Write every plot the table supports into ``out``; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("tokens_per_j"), float)]
    if not ok:
        raise ConfigError("no valid points in the results table: nothing to plot")
    written: list[Path] = []

    # --- tokens/J vs tokens/s with the Pareto front and GPU roofline estimates
    fig, ax = plt.subplots(figsize=(7, 5))
    xs = [r["tokens_per_s"] for r in ok]
    ys = [r["tokens_per_j"] for r in ok]
    ax.scatter(xs, ys, s=18, color="tab:blue", alpha=0.7, label="hwflow simulated points")
    front = pareto(list(zip(xs, ys, strict=True)))
    ax.plot(
        [xs[i] for i in front],
        [ys[i] for i in front],
        "-o",
        color="tab:red",
        ms=4,
        label="Pareto front",
    )
    gpu_pts = _gpu_points(ok)
    if gpu_pts:
        for name, e in gpu_pts:
            ax.scatter([e.tokens_per_s], [e.tokens_per_j], marker="*", s=90, color="tab:gray")
            ax.annotate(
                name,
                (e.tokens_per_s, e.tokens_per_j),
                fontsize=6,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_title(
            "Energy efficiency (GPU stars: HBM-roofline estimates at the workload's own bytes)",
            fontsize=10,
        )
    else:
        ax.set_title("Energy efficiency")
    for i in front:
        ax.annotate(
            _label(ok[i]), (xs[i], ys[i]), fontsize=6, xytext=(4, -8), textcoords="offset points"
        )
    if gpu_pts:
        fig.text(
            0.01,
            -0.02,
            "GPU stars: tokens/s = datasheet HBM bandwidth / the model's own bytes per token at"
            " FP16 or INT4 weights (an upper bound); tokens/J = that at TDP, a lower bound for"
            " that rate (mappings/gpus.yaml, docs/SOURCES.md); not measurements",
            fontsize=6,
            color="tab:gray",
        )
    ax.set_xlabel("throughput (tokens/s)")
    ax.set_ylabel("energy efficiency (tokens/J)")
    ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    written += _save(fig, out, "efficiency")
    plt.close(fig)

    # --- tokens/J vs sparsity and vs weight bits: for every (bits, N:M) the best design point
    best: dict[tuple[float, str], float] = {}
    for r in ok:
        sp = str(r.get("plan.sparsity", ""))
        bits = r.get("plan.bits")
        if ":" in sp or isinstance(bits, float):
            key = (bits if isinstance(bits, float) else math.nan, sp)
            best[key] = max(best.get(key, 0.0), r["tokens_per_j"])
    if any(":" in sp for _, sp in best):
        fig, ax = plt.subplots(figsize=(6, 4))
        lines: dict[float, list[tuple[float, float]]] = defaultdict(list)
        for (bits, sp), v in best.items():
            if ":" in sp:
                n, m = (float(x) for x in sp.split(":"))
                lines[bits].append((n / m, v))
        for bits, pts in sorted(lines.items()):
            pts.sort()
            name = "plan's weight bits" if math.isnan(bits) else f"INT{bits:g} weights"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=4, label=name)
        ax.set_xlabel("kept weights N/M (1 = dense)")
        ax.set_ylabel("energy efficiency (tokens/J), best design point")
        ax.set_title("Energy efficiency against N:M sparsity")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        written += _save(fig, out, "sparsity")
        plt.close(fig)
    if any(not math.isnan(b) for b, _ in best):
        fig, ax = plt.subplots(figsize=(6, 4))
        by_sp: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for (bits, sp), v in best.items():
            if not math.isnan(bits):
                by_sp[sp or "plan's sparsity"].append((bits, v))
        for sp, pts in sorted(by_sp.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=4, label=f"sparsity {sp}")
        ax.set_xlabel("weight precision (bits)")
        ax.set_ylabel("energy efficiency (tokens/J), best design point")
        ax.set_title("Energy efficiency against weight bits")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        written += _save(fig, out, "bits")
        plt.close(fig)

    # --- decode latency against context
    fig, ax = plt.subplots(figsize=(7, 4))
    curves = [r for r in ok if isinstance(r.get("curve"), str) and r["curve"].startswith("[")]
    for r in curves[:12]:
        pts = json.loads(r["curve"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, label=_label(r))
    if not curves:
        for r in ok[:12]:
            lo = r["prefill"] + 1
            hi = r["prefill"] + r["decode"]
            ax.errorbar(
                [(lo + hi) / 2],
                [r["ms_per_token_avg"]],
                yerr=[
                    [r["ms_per_token_avg"] - r["ms_per_token_min"]],
                    [r["ms_per_token_max"] - r["ms_per_token_avg"]],
                ],
                fmt="o",
                capsize=3,
                label=_label(r),
            )
    for name, e in gpu_pts:
        if name.endswith("FP16"):
            ax.axhline(e.ms_per_token, color="tab:gray", ls=":", lw=0.8)
            ax.annotate(
                f"{name} (roofline est.)",
                (ax.get_xlim()[0], e.ms_per_token),
                fontsize=6,
                color="tab:gray",
                xytext=(2, 2),
                textcoords="offset points",
            )
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode latency (ms/token)")
    ax.set_title("Decode latency per token against context")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    written += _save(fig, out, "latency")
    plt.close(fig)
    return written
