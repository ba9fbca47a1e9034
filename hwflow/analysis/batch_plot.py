"""The batched-decode figure of a batch sweep (``batch:`` in the grid, :mod:`.sweep`).

Left: decode tokens/s of all sequences against the batch; right: ms per token (the decode
step's time) with the step's matrix-engine time (MM + MV busy) and HBM time (channel streaming)
from the same simulations. One colour per preset (and model/plan when several). The first batch
at which the engine time exceeds the HBM time (the step turns compute-bound, from the model)
is marked on both panels.
"""

from __future__ import annotations

from typing import Any

__all__ = ["batch_rows", "compute_bound_batch", "draw_batch"]


def batch_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The valid rows of a batch sweep."""
    return [
        r
        for r in rows
        if r.get("status") == "ok"
        and r.get("point_batch") not in (None, "")
        and isinstance(r.get("ms_per_token"), float)
    ]


def _series(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Rows by (model, preset, plan), each sorted by batch."""
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = (str(r.get("model")), str(r.get("point_preset") or r.get("hw")), str(r.get("plan")))
        out.setdefault(key, []).append(r)
    return {k: sorted(v, key=lambda r: int(r["batch"])) for k, v in out.items()}


def _true(v: Any) -> bool:
    """A CSV cell read back as a flag (``True`` / ``true`` / 1)."""
    return v is True or str(v).strip().lower() in ("true", "1", "1.0")


def compute_bound_batch(series: list[dict[str, Any]]) -> int | None:
    """The first batch of a series whose decode step is compute-bound (engine time > HBM
    time), None if none is."""
    for r in series:
        if _true(r.get("compute_bound")):
            return int(r["batch"])
    return None


def _title(rows: list[dict[str, Any]]) -> str:
    """Model, plan and workload: the decode contexts the steps ran at."""
    models = sorted({str(r.get("model")) for r in rows})
    plans = sorted({str(r.get("plan")) for r in rows})
    cases = sorted({(int(r["prefill"]), int(r["decode"])) for r in rows})
    work = "; ".join(
        f"decode at context {p + 1}" if d == 1 else f"decode at contexts {p + 1}..{p + d}"
        for p, d in cases
    )
    return (
        f"{', '.join(models)}, plan {', '.join(plans)}: batched decode of B sequences, {work} "
        f"(every sequence at the same context)"
    )


def draw_batch(plt: Any, rows: list[dict[str, Any]]) -> Any:
    """The figure (module doc); None when the table has no batch sweep."""
    ok = batch_rows(rows)
    if not ok:
        return None
    series = _series(ok)
    several = len({k[0] for k in series}) > 1 or len({k[2] for k in series}) > 1
    colours = plt.get_cmap("tab10").colors
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, ((model, preset, plan), rs) in enumerate(series.items()):
        c = colours[i % len(colours)]
        name = f"{preset}: {model} / {plan}" if several else preset
        b = [int(r["batch"]) for r in rs]
        left.plot(b, [r["decode_tokens_per_s"] for r in rs], "o-", color=c, label=name)
        right.plot(b, [r["ms_per_token"] for r in rs], "o-", color=c, label=f"{name}: ms/token")
        right.plot(b, [r["decode_engine_ms_per_step"] for r in rs], "--", color=c, lw=1,
                   label=f"{name}: engine (MM+MV busy)")  # fmt: skip
        right.plot(b, [r["decode_hbm_ms_per_step"] for r in rs], ":", color=c, lw=1.5,
                   label=f"{name}: HBM streaming")  # fmt: skip
        cb = compute_bound_batch(rs)
        if cb is not None:
            for ax in (left, right):
                ax.axvline(cb, color=c, ls="-.", lw=0.8, alpha=0.7)
            at = next(r for r in rs if int(r["batch"]) == cb)
            left.annotate(f"compute-bound\nfrom B = {cb}", (cb, at["decode_tokens_per_s"]),
                          textcoords="offset points", xytext=(6, -28), fontsize=8,
                          color=c)  # fmt: skip
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ticks = sorted({int(r["batch"]) for r in ok})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("batch B (sequences per decode step)")
        ax.grid(True, alpha=0.3)
    left.set_ylabel("decode tokens/s (all sequences)")
    left.set_ylim(bottom=0)
    left.set_title("throughput")
    right.set_ylabel("ms per step (= ms/token of each sequence), log scale")
    right.set_yscale("log")
    lo, hi = right.get_ylim()
    ticks = [t * 10**e for e in range(-4, 6) for t in (1, 2, 5) if lo <= t * 10**e <= hi]
    right.set_yticks(ticks, [f"{t:g}" for t in ticks])
    right.minorticks_off()
    right.set_title("latency, engine time and HBM time per step")
    left.legend(fontsize=8, loc="upper left")
    right.legend(fontsize=7, loc="upper left")
    fig.suptitle(_title(ok), fontsize=10)
    fig.tight_layout()
    return fig
