"""Byte realignment of one row between two word-aligned memories (HBM beats, buffer words).

A row of ``n`` bytes starts ``s_in`` bytes into its first input word and must land ``s_out``
bytes into its first output word (both memories have ``wb``-byte words). The input is the
``ceil((s_in + n) / wb)`` words covering the row, the output the ``ceil((s_out + n) / wb)``
words covering its destination, each with the byte enables of the row's bytes. With ``delta =
s_in - s_out``, output word j is the ``wb`` bytes at ``delta mod wb`` of the window (input
word j + lead, input word j + lead - 1), lead = 1 if ``delta >= 0`` else 0; an input word past
the row's last is zero (a *flush* cycle: at most one per row). So a row costs one cycle per
input word plus at most one.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Realign", "span_words"]

LEN_BITS = 24  #: row_bytes field width of LD/ST


def span_words(start: int, n: int, wb: int) -> int:
    """Words of ``wb`` bytes covering ``n`` bytes that start ``start`` bytes into a word (the
    host-side twin of the hardware's count, for benches)."""
    return -(-(start % wb + n) // wb) if n else 0


class Realign(wiring.Component):
    """Realigns one row at a time: ``load`` (while ``idle``) takes ``s_in``, ``s_out``, ``n``
    and ``base`` (the word index of the row's first output word); input words stream in on
    ``i_*``, output words with byte enables and their word index leave on ``o_*``
    (``o_last``: the row's last output word; ``o_end``: ``o_last`` of a row loaded with
    ``end`` set, the end of a run). Valid/ready handshakes on both sides. ``idle``: a row may
    be loaded now (also in the cycle the current row takes its last input, when no flush
    follows, so rows run back to back); ``empty``: no row in progress (its last output word
    may still wait in ``o_*``)."""

    def __init__(self, wb: int, addr_bits: int) -> None:
        self.wb = wb
        self.lg = (wb - 1).bit_length()
        super().__init__(
            {
                "load": In(1),
                "s_in": In(self.lg),
                "s_out": In(self.lg),
                "n": In(LEN_BITS),
                "base": In(addr_bits),
                "end": In(1),
                "idle": Out(1),
                "empty": Out(1),
                "i_data": In(8 * wb),
                "i_valid": In(1),
                "i_ready": Out(1),
                "o_data": Out(8 * wb),
                "o_strb": Out(wb),
                "o_last": Out(1),
                "o_end": Out(1),
                "o_addr": Out(addr_bits),
                "o_valid": Out(1),
                "o_ready": In(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb, lg = self.wb, self.lg
        cnt = LEN_BITS + 1
        active = Signal()
        flush = Signal()
        lead = Signal()
        shift = Signal(lg)
        n_in, n_out, k, j = (Signal(cnt, name=x) for x in ("n_in", "n_out", "k", "j"))
        lo = Signal(lg)  # s_out: bytes before it in output word 0 are not the row's
        end = Signal(cnt)  # s_out + n: bytes from it on are not the row's
        hold = Signal(8 * wb)
        base = Signal(len(self.base), name="row_base")
        run_end = Signal()
        same = Signal()  # s_in == s_out: output word j is input word j
        can_out = ~self.o_valid | self.o_ready
        finished = active & (k == n_in) & (j == n_out) & ~flush

        with m.If(self.o_valid & self.o_ready):
            m.d.sync += self.o_valid.eq(0)

        def emit(low: object, high: object) -> None:
            """Register output word j from the window (high, low)."""
            window = Cat(low, high)
            at = j << lg  # byte of output word j, from the start of output word 0
            strb = Cat(*((at + t >= lo) & (at + t < end) for t in range(wb)))
            m.d.sync += [
                self.o_data.eq((window >> (shift << 3))[: 8 * wb]),
                self.o_strb.eq(strb),
                self.o_valid.eq(1),
                self.o_last.eq(j + 1 == n_out),
                self.o_end.eq(run_end & (j + 1 == n_out)),
                self.o_addr.eq(base + j),
                j.eq(j + 1),
            ]

        empty = ~active | finished
        last_in = Signal()  # the row's last input is taken now and nothing is left after it
        with m.If(empty), m.If(finished):
            m.d.sync += active.eq(0)
        with m.Elif(flush), m.If(can_out):
            emit(hold, Const(0, 8 * wb))
            m.d.sync += flush.eq(0)
        with m.Else():
            m.d.comb += self.i_ready.eq(can_out & (k < n_in))
            with m.If(self.i_valid & self.i_ready):
                m.d.sync += [hold.eq(self.i_data), k.eq(k + 1)]
                # input and output words aligned alike, or a one-word row with lead: the
                # output word is all in this input word
                single = (n_in == 1) & lead | same
                with m.If(same | (n_in == 1) & lead):
                    emit(self.i_data, Const(0, 8 * wb))
                with m.Elif((k >= lead) & (j < n_out)):
                    emit(hold, self.i_data)
                more = (n_out + lead > n_in) & ~single  # a flush cycle after the last input
                with m.If(k + 1 == n_in):
                    m.d.sync += flush.eq(more)
                    m.d.comb += last_in.eq(~more)
        m.d.comb += [self.empty.eq(empty), self.idle.eq(empty | last_in)]
        with m.If(self.load & (self.n != 0) & self.idle):
            s_in, s_out = self.s_in, self.s_out
            m.d.sync += [
                active.eq(1),
                flush.eq(0),
                k.eq(0),
                j.eq(0),
                hold.eq(0),
                n_in.eq((s_in + self.n + (wb - 1)) >> lg),
                n_out.eq((s_out + self.n + (wb - 1)) >> lg),
                lead.eq(s_in >= s_out),
                shift.eq((s_in - s_out)[:lg]),
                lo.eq(s_out),
                end.eq(s_out + self.n),
                base.eq(self.base),
                run_end.eq(self.end),
                same.eq(s_in == s_out),
            ]
        return m
