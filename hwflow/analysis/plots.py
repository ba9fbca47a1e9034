"""Energy-efficiency plots from a results table (the CSV ``hwflow sweep`` writes).

Plots read results; they never run simulations. Each figure is written as PNG and SVG with
labelled axes in SI units. GPU markers are HBM-roofline *estimates* (:mod:`.gpus`), labelled so.

Every figure gives each preset its own colour and each plan (with a sweep's overrides) its
own marker, and names the model and the lengths in its title; discrete axes (weight bits,
N:M) have one tick per value.

* ``efficiency``: tokens/J against tokens/s, every valid point labelled, the Pareto front
  (points no other point beats on both; ringed, joined when it has several), GPU estimates at
  the workload's own bytes per decode token (FP16 and INT4 weights).
* ``sparsity``: tokens/J against the kept fraction N/M, one line per preset and weight
  precision (needs a ``plan.sparsity`` column; skipped otherwise).
* ``bits``: tokens/J against weight bits, one line per preset and N:M (needs ``plan.bits``).
* ``latency``: decode latency per token (ms) against context length, one line per run, from
  the ``curve`` JSON column when present, else min/avg/max markers at the decode range; the
  legend sits outside the axes.
* ``energy``: energy per token by component (static, HBM, buffers, MACs, SFU, idle units,
  instruction fetch), one stacked bar per design point (:mod:`.energy_plot`; needs the
  ``energy_*_j`` columns).
* ``boards``: decode tokens/s and tokens/J against the board count of a multi-board sweep
  (:mod:`.boards_plot`; needs a ``boards`` column with two or more counts).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from hwflow.analysis.batch_plot import batch_rows, draw_batch
from hwflow.analysis.boards_plot import draw_boards
from hwflow.analysis.energy_plot import draw_energy
from hwflow.analysis.gpus import PRECISIONS, estimate, load_gpus, workload_bytes_per_token
from hwflow.errors import ConfigError, HwflowError

__all__ = ["pareto", "pareto_min_max", "plot_results", "read_results"]

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
                text_cols = ("hw", "plan", "model", "quality_model")
                d[k] = float(v) if v not in ("", None) and k not in text_cols else v
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


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "*", "p")
_DASHES = ("-", "--", "-.", ":")


def _save(fig: Any, out: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=150 if ext == "png" else None, bbox_inches="tight")
        paths.append(p)
    return paths


def _preset(r: dict[str, Any]) -> str:
    """The row's base preset (a sweep's parameter overrides are in its ``hw`` name)."""
    return str(r.get("point_preset") or r.get("hw", "?"))


def _plan(r: dict[str, Any]) -> str:
    """The row's plan, short: INTk and N:M when swept, else the plan's name."""
    parts = []
    if isinstance(r.get("plan.bits"), float):
        parts.append(f"INT{r['plan.bits']:g}")
    if r.get("plan.sparsity"):
        sp = str(r["plan.sparsity"])
        n, _, m = sp.partition(":")
        parts.append("dense" if n == m else sp)
    return " ".join(parts) or str(r.get("plan", ""))


def _label(r: dict[str, Any]) -> str:
    """The run's preset and plan."""
    return f"{r.get('hw', '?')} / {_plan(r)}"


def _nm_order(sp: str) -> float:
    """Sort key of an N:M string: the kept fraction (dense last)."""
    n, _, m = sp.partition(":")
    try:
        return float(n) / float(m)
    except ValueError:
        return math.inf


class _Style:
    """One colour per preset and one marker (and dash) per plan, fixed for all figures."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        import matplotlib.pyplot as plt

        cycle = plt.get_cmap("tab10").colors
        presets = list(dict.fromkeys(_preset(r) for r in rows))
        plans = list(dict.fromkeys(_plan(r) for r in rows))
        self.colour = {p: cycle[i % len(cycle)] for i, p in enumerate(presets)}
        self.marker = {p: _MARKERS[i % len(_MARKERS)] for i, p in enumerate(plans)}
        self.dash = {p: _DASHES[i % len(_DASHES)] for i, p in enumerate(plans)}

    def legend(self, ax: Any, **kw: Any) -> None:
        """Two keys: colours for presets, markers for plans (not one entry per point)."""
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], color=c, marker="o", ls="", label=f"preset {p}")
            for p, c in self.colour.items()
        ]
        if len(self.marker) > 1:
            handles += [
                Line2D([], [], color="black", marker=m, ls="", label=p)
                for p, m in self.marker.items()
            ]
        ax.legend(handles=handles + ax.get_legend_handles_labels()[0], **kw)


def _case(rows: list[dict[str, Any]]) -> str:
    """The model(s) and lengths of the rows, for titles: 'llama2-7b, prefill 128, decode 512'."""
    models = sorted({str(r.get("model") or r.get("point_model", "?")) for r in rows})
    pre = sorted({_fmt(r.get("prefill")) for r in rows})
    dec = sorted({_fmt(r.get("decode")) for r in rows})
    return f"{', '.join(models)}, prefill {'/'.join(pre)}, decode {'/'.join(dec)}"


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
    batched = batch_rows(rows)  # a batch sweep's rows: their own figure (:mod:`.batch_plot`)
    ok = [r for r in rows if r.get("status") == "ok" and isinstance(r.get("tokens_per_j"), float)]
    ok = [r for r in ok if r not in batched]
    if not ok and not batched:
        raise ConfigError("no valid points in the results table: nothing to plot")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if batched:
        fig = draw_batch(plt, batched)
        written += _save(fig, out, "batch")
        plt.close(fig)
    if not ok:
        return written
    style = _Style(ok)
    for name, draw in (
        ("efficiency", _efficiency),
        ("sparsity", _sparsity),
        ("bits", _bits),
        ("latency", _latency),
        ("quality", _quality),
        ("energy", _energy),
        ("boards", _boards),
    ):
        fig = draw(plt, ok, style)
        if fig is not None:
            written += _save(fig, out, name)
            plt.close(fig)
    return written


def _boards(plt: Any, ok: list[dict[str, Any]], style: _Style) -> Any:
    """Decode tokens/s and tokens/J against boards (:mod:`.boards_plot`; needs a ``boards``
    column with two or more counts)."""
    return draw_boards(plt, ok, _label, _case(ok))


def _energy(plt: Any, ok: list[dict[str, Any]], style: _Style) -> Any:
    """Energy per token by component, one bar per design point (:mod:`.energy_plot`)."""
    return draw_energy(plt, ok, _label, _case(ok))


def _efficiency(plt: Any, ok: list[dict[str, Any]], style: _Style) -> Any:
    """tokens/J against tokens/s: every point labelled, the Pareto front, GPU estimates."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [r["tokens_per_s"] for r in ok]
    ys = [r["tokens_per_j"] for r in ok]
    side = {p: i % 2 for i, p in enumerate(style.colour)}  # labels right / left by preset
    for r, x, y in zip(ok, xs, ys, strict=True):
        colour, left = style.colour[_preset(r)], side[_preset(r)]
        ax.scatter([x], [y], s=30, color=colour, marker=style.marker[_plan(r)])
        ax.annotate(
            _plan(r),
            (x, y),
            fontsize=6,
            color=colour,
            xytext=(-5, -3) if left else (5, 2),
            textcoords="offset points",
            ha="right" if left else "left",
            va="top" if left else "bottom",
        )
    _ring_front(ax, xs, ys, pareto(list(zip(xs, ys, strict=True))))
    gpu_pts = _gpu_points(ok)
    title = f"Energy efficiency: {_case(ok)}"
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
        title += "\nGPU stars: HBM-roofline estimates at the model's own bytes per token"
        fig.text(
            0.01,
            -0.03,
            "GPU stars: tokens/s = datasheet HBM bandwidth / the model's own bytes per token at"
            " FP16 or INT4 weights (an upper bound);\ntokens/J = that at TDP, a lower bound for"
            " that rate (mappings/gpus.yaml, docs/SOURCES.md); not measurements",
            fontsize=6,
            color="tab:gray",
        )
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("throughput (tokens/s)")
    ax.set_ylabel("energy efficiency (tokens/J)")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.08)
    ax.grid(True, alpha=0.3)
    style.legend(ax, fontsize=7, loc="best")
    return fig


def pareto_min_max(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both lower x and higher y, by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], -math.inf
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def _ring_front(ax: Any, xs: list[float], ys: list[float], front: list[int]) -> None:
    """Ring the Pareto points (joined when there are several)."""
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="tab:red", label="Pareto front")
    if len(front) > 1:
        ax.plot(fx, fy, "-", color="tab:red", lw=0.8, alpha=0.6)


def _quality(plt: Any, ok: list[dict[str, Any]], style: _Style) -> Any:
    """tokens/J against the plan's perplexity on real text (lower is better), Pareto front:
    what each step of efficiency costs in quality. Needs the ``ppl`` column."""
    rows = [r for r in ok if isinstance(r.get("ppl"), float) and r["ppl"] > 0]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs = [r["ppl"] for r in rows]
    ys = [r["tokens_per_j"] for r in rows]
    for r, x, y in zip(rows, xs, ys, strict=True):
        colour = style.colour[_preset(r)]
        ax.scatter([x], [y], s=30, color=colour, marker=style.marker[_plan(r)])
        ax.annotate(
            _plan(r), (x, y), fontsize=6, color=colour, xytext=(5, 2), textcoords="offset points"
        )
    _ring_front(ax, xs, ys, pareto_min_max(list(zip(xs, ys, strict=True))))
    fl = [r["float_ppl"] for r in rows if isinstance(r.get("float_ppl"), float)]
    if fl:
        ax.axvline(fl[0], color="tab:gray", ls=":", lw=0.9, label=f"float64 ({fl[0]:.3g})")
    qm = sorted({str(r.get("quality_model", "?")) for r in rows})
    toks = sorted({_fmt(r.get("quality_tokens")) for r in rows})
    ax.set_title(
        f"Efficiency against quality: {_case(rows)}\nperplexity of each plan applied to "
        f"{', '.join(qm)} on {'/'.join(toks)} tokens of real text (integer reference)",
        fontsize=9,
    )
    ax.set_xlabel("perplexity (lower is better, log scale)")
    ax.set_ylabel("energy efficiency (tokens/J)")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.08)
    ax.grid(True, alpha=0.3)
    style.legend(ax, fontsize=7, loc="best")
    return fig


def _nm_lines(ok: list[dict[str, Any]]) -> dict[tuple[str, str, float], float]:
    """(preset, N:M, bits) -> the best tokens/J of the rows with those (over other axes)."""
    best: dict[tuple[str, str, float], float] = {}
    for r in ok:
        sp = str(r.get("plan.sparsity") or "")
        bits = r.get("plan.bits")
        key = (_preset(r), sp, bits if isinstance(bits, float) else math.nan)
        best[key] = max(best.get(key, 0.0), r["tokens_per_j"])
    return best


def _sparsity(plt: Any, ok: list[dict[str, Any]], style: _Style) -> Any:
    """tokens/J against the kept fraction N/M: a line per preset and precision."""
    best = {k: v for k, v in _nm_lines(ok).items() if ":" in k[1]}
    if not best:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    lines: dict[tuple[str, float], list[tuple[float, float]]] = defaultdict(list)
    ticks: dict[float, str] = {}
    for (preset, sp, bits), v in best.items():
        frac = _nm_order(sp)
        ticks[frac] = sp
        lines[(preset, bits)].append((frac, v))
    dashes = {b: _DASHES[i % len(_DASHES)] for i, b in enumerate(sorted({k[1] for k in lines}))}
    for (preset, bits), pts in sorted(lines.items()):
        pts.sort()
        name = f"{preset}, " + ("plan's bits" if math.isnan(bits) else f"INT{bits:g}")
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            dashes[bits],
            marker="o",
            ms=4,
            color=style.colour[preset],
            label=name,
        )
    ax.set_xticks(sorted(ticks), [ticks[f] for f in sorted(ticks)])
    ax.set_xlabel("N:M sparsity (kept weights N of every M; M:M = dense)")
    ax.set_ylabel("energy efficiency (tokens/J)")
    ax.set_title(f"Energy efficiency against N:M sparsity\n{_case(ok)}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _bits(plt: Any, ok: list[dict[str, Any]], style: _Style) -> Any:
    """tokens/J against weight bits (one tick per precision): a line per preset and N:M."""
    best = {k: v for k, v in _nm_lines(ok).items() if not math.isnan(k[2])}
    if not best:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    lines: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for (preset, sp, bits), v in best.items():
        lines[(preset, sp)].append((bits, v))
    sps = sorted({k[1] for k in lines}, key=_nm_order)
    dashes = {sp: _DASHES[i % len(_DASHES)] for i, sp in enumerate(sps)}
    markers = {sp: _MARKERS[i % len(_MARKERS)] for i, sp in enumerate(sps)}
    for (preset, sp), pts in sorted(lines.items(), key=lambda kv: (kv[0][0], _nm_order(kv[0][1]))):
        pts.sort()
        label = f"{preset}, " + (("dense" if _nm_order(sp) == 1 else sp) if sp else "plan's N:M")
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            dashes[sp],
            marker=markers[sp],
            ms=5,
            color=style.colour[preset],
            label=label,
        )
    bits = sorted({k[2] for k in best})
    ax.set_xticks(bits, [f"INT{b:g}" for b in bits])
    ax.set_xlim(bits[0] - 0.5, bits[-1] + 0.5)
    ax.set_xlabel("weight precision")
    ax.set_ylabel("energy efficiency (tokens/J)")
    ax.set_title(f"Energy efficiency against weight precision\n{_case(ok)}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def _latency(plt: Any, ok: list[dict[str, Any]], style: _Style) -> Any:
    """Decode ms/token against context: a line per run (colour: preset, dash+marker: plan);
    GPU roofline estimates as grey lines, named in the legend; the legend outside."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    curves = [r for r in ok if isinstance(r.get("curve"), str) and r["curve"].startswith("[")]
    for r in curves:
        pts = json.loads(r["curve"])
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            style.dash[_plan(r)],
            marker=style.marker[_plan(r)],
            markevery=max(1, len(pts) // 6),
            ms=4,
            lw=1.2,
            color=style.colour[_preset(r)],
            label=_label(r),
        )
    if not curves:
        for r in ok:
            lo = r["prefill"] + 1
            hi = r["prefill"] + r["decode"]
            ax.errorbar(
                [(lo + hi) / 2],
                [r["ms_per_token_avg"]],
                yerr=[
                    [r["ms_per_token_avg"] - r["ms_per_token_min"]],
                    [r["ms_per_token_max"] - r["ms_per_token_avg"]],
                ],
                fmt=style.marker[_plan(r)],
                color=style.colour[_preset(r)],
                capsize=3,
                label=_label(r),
            )
    fp16 = [(name, e) for name, e in _gpu_points(ok) if name.endswith("FP16")]
    for i, (name, e) in enumerate(fp16):
        ax.axhline(
            e.ms_per_token,
            color="tab:gray",
            ls=_DASHES[(i + 1) % len(_DASHES)],
            lw=0.9,
            label=f"{name} (HBM-roofline est.)",
        )
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode latency (ms/token)")
    ax.set_title(f"Decode latency per token against context: {_case(ok)}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig
