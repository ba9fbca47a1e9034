"""The energy-per-token breakdown figure of ``hwflow plot`` (``energy.png`` / ``.svg``).

One horizontal stacked bar per design point (a results row): the energy of the whole case
(prefill and decode) per generated token, split into the components of
:func:`hwflow.energy.energy` - static (board idle power x time), HBM, on-chip buffers, MACs,
SFU, idle units (clocked but stalled) and instruction fetch - in mJ per token. It reads the
``energy_<component>_j`` columns a sweep writes; tokens = ``energy_j x tokens_per_j`` (the
row's own definition of tokens/J). Rows without those columns draw nothing."""

from __future__ import annotations

from typing import Any

__all__ = ["COMPONENTS", "breakdown", "draw_energy"]

#: Components in bar order, with their legend label (the keys of :func:`hwflow.energy.energy`).
COMPONENTS: dict[str, str] = {
    "static": "static (board idle power x time)",
    "hbm": "HBM reads and writes",
    "buffers": "on-chip buffers (BRAM/URAM)",
    "mac": "MACs (DSP chains)",
    "sfu": "special functions (SFU)",
    "idle": "idle units (clocked, stalled)",
    "instr": "instruction fetch",
}

#: One fixed, distinct colour per component (colour-blind-safe Okabe-Ito palette).
_COLOURS = {
    "static": "#999999",
    "hbm": "#0072B2",
    "buffers": "#56B4E9",
    "mac": "#E69F00",
    "sfu": "#009E73",
    "idle": "#CC79A7",
    "instr": "#D55E00",
}


def breakdown(row: dict[str, Any]) -> dict[str, float] | None:
    """mJ per generated token of each component of ``row`` (None if the row lacks any)."""
    cols = [f"energy_{k}_j" for k in COMPONENTS] + ["energy_j", "tokens_per_j"]
    if not all(isinstance(row.get(c), float) for c in cols):
        return None
    tokens = row["energy_j"] * row["tokens_per_j"]
    if tokens <= 0:
        return None
    return {k: row[f"energy_{k}_j"] / tokens * 1e3 for k in COMPONENTS}


def _stack(ax: Any, points: list[tuple[str, dict[str, float]]], keys: list[str]) -> None:
    """Stacked horizontal bars of ``keys`` for every point, the total written at each end."""
    ys = range(len(points))
    left = [0.0] * len(points)
    for k in keys:
        widths = [b[k] for _, b in points]
        ax.barh(ys, widths, left=left, color=_COLOURS[k], label=COMPONENTS[k], height=0.7)
        left = [a + w for a, w in zip(left, widths, strict=True)]
    for y, total in zip(ys, left, strict=True):
        ax.annotate(
            f"{total:,.0f}" if total >= 100 else f"{total:.3g}",
            (total, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=6,
        )
    ax.set_xlim(0, max(left) * 1.15 if max(left) > 0 else 1)
    ax.grid(True, axis="x", alpha=0.3)


def draw_energy(plt: Any, ok: list[dict[str, Any]], label: Any, case: str) -> Any:
    """The figure (None when no row has the energy columns): left, every component; right, the
    dynamic components alone on their own scale (static power usually dwarfs them).
    ``label(row)`` names a design point; ``case`` (model and lengths) goes into the title."""
    points = [(label(r), b) for r in ok if (b := breakdown(r)) is not None]
    if not points:
        return None
    points.sort(key=lambda p: sum(p[1].values()))
    fig, (whole, dyn) = plt.subplots(
        1, 2, figsize=(11, 1.6 + 0.3 * len(points)), sharey=True, width_ratios=(1, 1)
    )
    _stack(whole, points, list(COMPONENTS))
    _stack(dyn, points, [k for k in COMPONENTS if k != "static"])
    whole.set_yticks(list(range(len(points))), [n for n, _ in points], fontsize=6)
    whole.set_ylabel("design point (preset / plan)")
    whole.set_xlabel("mJ per generated token, all components")
    whole.set_title("all components", fontsize=8)
    dyn.set_xlabel("mJ per generated token, static excluded")
    dyn.set_title("dynamic components only (own scale)", fontsize=8)
    fig.suptitle(
        f"Energy per generated token by component: {case} (whole case: prefill + decode)",
        fontsize=9,
    )
    handles, names = whole.get_legend_handles_labels()
    fig.legend(
        handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(0.99, 0.9), title="component"
    )
    fig.tight_layout()
    return fig
