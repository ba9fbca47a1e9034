"""The matmul unit's loop nest, one copy per operand stream and one for the drain: token
passes (``tstep`` tokens), row groups (``rpb`` output rows), then an inner index (the feed:
M-blocks of K and the parts of one block; the drain: token lanes and drain words)."""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Value

__all__ = ["Loops"]


class Loops:
    """Counters ``tb`` (first token of the pass), ``gb`` (first row of the group) and the
    inner ``i`` (0 .. ``inner`` - 1) and ``j`` (0 .. ``parts`` - 1), with ``run`` high from
    ``start`` until the step after the last (``fire`` advances one step)."""

    def __init__(self, name: str, width: int = 17) -> None:
        self.tb = Signal(width, name=f"{name}_tb")
        self.gb = Signal(width, name=f"{name}_gb")
        self.i = Signal(width, name=f"{name}_i")
        self.j = Signal(8, name=f"{name}_j")
        self.run = Signal(name=f"{name}_run")
        self.gi = Signal(24, name=f"{name}_gi")  #: row groups completed (all passes)
        self.ti = Signal(17, name=f"{name}_ti")  #: passes completed
        self.last_j = Signal(name=f"{name}_last_j")
        self.last_i = Signal(name=f"{name}_last_i")
        self.last_g = Signal(name=f"{name}_last_g")
        self.last_t = Signal(name=f"{name}_last_t")

    def build(
        self,
        m: Module,
        *,
        start: Value,
        go: Value,
        fire: Value,
        rows: Value,
        tstep: Value,
        cols: Value,
        rpb: Value,
        inner: Value,
        istep: Value,
        parts: Value,
    ) -> None:
        """``start`` resets (running iff ``go``); ``i`` counts 0, istep, .. below ``inner``."""
        m.d.comb += [
            self.last_j.eq(self.j + 1 >= parts),
            self.last_i.eq(self.i + istep >= inner),
            self.last_g.eq(self.gb + rpb >= cols),
            self.last_t.eq(self.tb + tstep >= rows),
        ]
        with m.If(start):
            m.d.sync += [
                self.tb.eq(0),
                self.gb.eq(0),
                self.i.eq(0),
                self.j.eq(0),
                self.gi.eq(0),
                self.ti.eq(0),
                self.run.eq(go),
            ]
        with m.Elif(fire & self.run):
            m.d.sync += self.j.eq(self.j + 1)
            with m.If(self.last_j):
                m.d.sync += [self.j.eq(0), self.i.eq(self.i + istep)]
                with m.If(self.last_i):
                    m.d.sync += [self.i.eq(0), self.gb.eq(self.gb + rpb), self.gi.eq(self.gi + 1)]
                    with m.If(self.last_g):
                        m.d.sync += [self.gb.eq(0), self.tb.eq(self.tb + tstep)]
                        m.d.sync += self.ti.eq(self.ti + 1)
                        with m.If(self.last_t):
                            m.d.sync += self.run.eq(0)
