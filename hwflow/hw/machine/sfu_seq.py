"""The SFU's pass order: which row and pass follows which, shared by producer and consumer.

An instruction is a sequence of *steps* ``k``; each step is a few *passes* ``ps`` over one
row (``npass`` passes per row, the last the output pass). For the functions whose output
pass needs per-row scalars (``il``: norm, mul, reluq -- the reciprocal of the row maximum,
the norm's inverse square root) the output pass of row ``k - 1`` runs *after* the statistics
passes of row ``k``, so the scalar work of a row overlaps the next row's statistics:

    step 0: stats(0);  step k (1 <= k < rows): stats(k), out(k-1);  step rows: out(rows-1)

Every other function runs row by row (step ``k`` = all passes of row ``k``). Producer and
consumer call :func:`advance` at the end of each pass with their own ``k``/``ps`` registers,
so both walk the same order.
"""

from __future__ import annotations

from collections.abc import Callable

from amaranth.hdl import Module, Mux, Value

__all__ = ["advance"]


def advance(
    m: Module,
    k: Value,
    ps: Value,
    il: Value,
    npass: Value,
    rows: Value,
    on_step: Callable[[], None],
    on_end: Callable[[], None],
) -> None:
    """At the end of pass ``ps`` of step ``k``: the next pass, or the next step (``on_step``
    runs in the same cycle as ``k`` moves on), or the instruction's end (``on_end``)."""
    out = ps == npass - 1
    nk = k + 1
    with m.If(~out & ((ps != npass - 2) | ~il)):  # more statistics passes of this row
        m.d.sync += ps.eq(ps + 1)
    with m.Elif(~out & (k != 0)):  # the row's statistics are done: out(k - 1) next
        m.d.sync += ps.eq(npass - 1)
    with m.Elif(Mux(il, k == rows, nk == rows)):
        on_end()
    with m.Else():
        m.d.sync += [k.eq(nk), ps.eq(Mux(il & (nk == rows), npass - 1, 0))]
        on_step()
