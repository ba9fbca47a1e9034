"""The multi-board plot of a sweep over ``boards`` (:mod:`hwflow.perf.system`): decode
tokens/s and tokens/J against the board count, one line per parallel mode and design point
(preset / plan), the ideal linear scaling of the tokens/s of the fewest boards dashed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

__all__ = ["draw_boards"]


def draw_boards(
    plt: Any, ok: list[dict[str, Any]], label: Callable[[dict[str, Any]], str], case: str
) -> Any:
    """The figure, or None when the rows hold fewer than two board counts."""
    rows = [r for r in ok if isinstance(r.get("boards"), float)]
    if len({r["boards"] for r in rows}) < 2:
        return None
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        mode = r.get("parallel") if r["boards"] > 1 else "one board"
        lines[f"{label(r)}, {r.get('parallel', 'tensor')} parallel"].append({**r, "_m": mode})
    fig, (ax_s, ax_j) = plt.subplots(1, 2, figsize=(11, 4.5))
    counts = sorted({int(r["boards"]) for r in rows})
    for i, (name, pts) in enumerate(sorted(lines.items())):
        pts.sort(key=lambda r: r["boards"])
        xs = [int(r["boards"]) for r in pts]
        colour = f"C{i % 10}"
        ax_s.plot(xs, [r["decode_tokens_per_s"] for r in pts], "o-", color=colour, label=name)
        ax_j.plot(xs, [r["tokens_per_j"] for r in pts], "o-", color=colour, label=name)
        base = pts[0]
        ideal = [base["decode_tokens_per_s"] * x / base["boards"] for x in xs]
        ax_s.plot(xs, ideal, ":", color=colour, linewidth=1)
    ax_s.plot([], [], ":", color="grey", label="ideal linear scaling (dotted)")
    for ax, what in (
        (ax_s, "decode throughput (tokens/s)"),
        (ax_j, "energy efficiency (tokens/J)"),
    ):
        ax.set_xlabel("boards in the ring")
        ax.set_ylabel(what)
        ax.set_xticks(counts)
        ax.grid(True, alpha=0.3)
    ax_s.set_title("decode tokens/s (batch 1)")
    ax_j.set_title("tokens/J (prefill + decode, all boards)")
    ax_s.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Multi-board systems: {case}; link energy not modelled")
    fig.tight_layout()
    return fig
