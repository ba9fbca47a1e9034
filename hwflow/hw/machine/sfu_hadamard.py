"""The SFU's Hadamard row buffer: the unnormalised Walsh-Hadamard transform of one head.

:func:`hwflow.numerics.hadamard_int` of a head of ``hd = 2**ldim`` elements (``ldim`` >= 1,
``hd`` <= ``max_dim``), exactly (adds only, every value kept at full width). The head arrives
as *chunks* of ``n = min(lanes, hd / 2)`` consecutive elements, one per cycle (RoPE's groups:
a half head is a whole number of chunks), and leaves as the same chunks of the transform.
With ``C = hd / n`` chunks, Sylvester's ``H_hd = H_C (x) H_n`` splits the work:

* *in-chunk* stages (element strides ``1 .. n/2``): a fixed butterfly network on the arriving
  chunk, combinational, before it is stored;
* *cross-chunk* stages (chunk strides ``1 .. C/2``), ``log2(C)`` of them, each ``C / 2``
  cycles: one chunk pair ``(c, c + s)`` per cycle becomes ``(a + b, a - b)`` in place
  (``2 * lanes`` adders); the last stage also takes the head's maximum ``max|y|`` (what
  :func:`hwflow.numerics.quant_rows` needs before the first code);
* the chunks out, one per cycle; the next head's chunks come in meanwhile, each into the
  word of a chunk already out (both go in chunk order).

The butterfly stages commute (each is ``H_2`` on one index bit), so this order gives
``hadamard_int``'s result. Storage: ``max(max_dim / lanes, 2)`` words of ``lanes`` elements of
``in_bits + 1 + log2(max_dim)`` bits (``|y| <= hd * 2**(in_bits - 1)``); the area grows with
the lanes, not with the head: ``2 * lanes`` adders and two word multiplexers.

Cycles per head: ``C`` in, ``log2(C) * C / 2`` stages, ``C`` out (:func:`head_cycles`); the
next head's input overlaps the output (back to back: ``C + log2(C) * C / 2`` per head).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["HADAMARD_MAX_DIM", "Hadamard", "chunk", "head_cycles"]

#: The largest head the SFU's row buffer holds: the head_dim of every LLaMA-family config in
#: ``mappings/models`` (LLaMA-2 7B/70B and Mistral 7B use 128: their ``config.json``
#: ``hidden_size / num_attention_heads``).
HADAMARD_MAX_DIM = 128


def _log2(n: int) -> int:
    return n.bit_length() - 1


def chunk(lanes: int, hd: int) -> int:
    """Elements per chunk (per input group) for a head of ``hd``: ``min(lanes, hd / 2)``."""
    return min(lanes, hd // 2)


def head_cycles(lanes: int, hd: int) -> tuple[int, int, int]:
    """(in, stage, out) cycles of one head of ``hd`` elements (module doc)."""
    c = hd // chunk(lanes, hd)
    return c, _log2(c) * c // 2, c


class Hadamard(wiring.Component):
    """The row buffer (module doc). ``ldim``: log2 of the head (held through an
    instruction); ``i``: the
    chunks in (lanes ``0 .. n-1`` valid, ``in_bits`` each, signed); ``o``: the transform's
    chunks out (``first``/``last`` of the head); ``mx``: ``max|y|`` of the head, valid with
    ``o``; ``idle``: no head inside."""

    def __init__(self, lanes: int, max_dim: int = HADAMARD_MAX_DIM, in_bits: int = 16) -> None:
        if lanes & (lanes - 1) or max_dim & (max_dim - 1) or max_dim < 2:
            raise ValueError(f"lanes {lanes!r} and max_dim {max_dim!r} must be powers of two")
        self.lanes, self.max_dim, self.in_bits = lanes, max_dim, in_bits
        self.width = in_bits + 1 + _log2(max_dim)
        self.words = max(max_dim // lanes, 2)
        out = data.StructLayout({"data": lanes * self.width, "first": 1, "last": 1})
        super().__init__(
            {
                "ldim": In(range(_log2(max_dim) + 1)),
                "i": In(stream.Signature(lanes * in_bits)),
                "o": Out(stream.Signature(out)),
                "mx": Out(self.width),
                "idle": Out(1),
            }
        )

    def _lane(self, word, j: int):
        return word[j * self.width : (j + 1) * self.width].as_signed()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        lanes, w = self.lanes, self.width
        words = [Signal(lanes * w, name=f"hw{k}") for k in range(self.words)]
        lgn = Signal(range(_log2(lanes) + 1))  # log2 of the chunk
        lgc = Signal(range(_log2(self.max_dim) + 1))  # log2 of the chunks per head
        m.d.comb += [
            lgn.eq(Mux(self.ldim - 1 < _log2(lanes), self.ldim - 1, _log2(lanes))),
            lgc.eq(self.ldim - lgn),
        ]
        ci = Signal(range(self.words + 1))  # chunk in
        c = Signal(range(self.words + 1))  # chunk out
        k = Signal(range(_log2(self.words) + 1))  # cross stage
        j = Signal(range(self.words))  # pair of the stage
        nchunks = (1 << lgc)[: len(c)]
        word = self._in_chunk(m, self.i.payload, lgn)
        with m.If(self.i.valid & self.i.ready):
            with m.Switch(ci):
                for idx in range(self.words):
                    with m.Case(idx):
                        m.d.sync += words[idx].eq(word)
            m.d.sync += ci.eq(ci + 1)
        with m.FSM(name="hadamard"):
            with m.State("IN"):
                m.d.comb += [self.i.ready.eq(1), self.idle.eq(ci == 0)]
                with m.If(self.i.valid & (ci == nchunks - 1)):
                    m.d.sync += [ci.eq(0), c.eq(0), k.eq(0), j.eq(0), self.mx.eq(0)]
                    m.next = "STAGE"
            with m.State("STAGE"):
                self._stage(m, words, k, j, lgn, lgc)
                with m.If(j == (nchunks >> 1) - 1):
                    m.d.sync += [j.eq(0), k.eq(k + 1)]
                    with m.If(k == lgc - 1):
                        m.next = "OUT"
                with m.Else():
                    m.d.sync += j.eq(j + 1)
            with m.State("OUT"):  # the next head's chunks may replace those already out
                m.d.comb += [
                    self.i.ready.eq(ci < c),
                    self.o.valid.eq(1),
                    self.o.payload.data.eq(Array(words)[c]),
                    self.o.payload.first.eq(c == 0),
                    self.o.payload.last.eq(c == nchunks - 1),
                ]
                with m.If(self.o.ready):
                    m.d.sync += c.eq(c + 1)
                    with m.If(c == nchunks - 1):
                        m.d.sync += c.eq(0)
                        m.next = "IN"
        return m

    def _in_chunk(self, m: Module, x, lgn):
        """The in-chunk stages (strides below the chunk) on an arriving chunk, sign-extended
        to the buffer's width."""
        lanes, w = self.lanes, self.width
        v = []
        for q in range(lanes):
            e = Signal(signed(w), name=f"hin0_{q}")
            m.d.comb += e.eq(x[q * self.in_bits : (q + 1) * self.in_bits].as_signed())
            v.append(e)
        t = 1
        while t < lanes:
            on = Signal(name=f"hin_on{t}")
            m.d.comb += on.eq(_log2(t) < lgn)
            nv = []
            for q in range(lanes):
                pair = v[q] + v[q + t] if not q & t else v[q - t] - v[q]
                s = Signal(signed(w), name=f"hin{t}_{q}")
                m.d.comb += s.eq(Mux(on, pair, v[q]))
                nv.append(s)
            v, t = nv, 2 * t
        return Cat(*v)

    def _stage(self, m: Module, words, k, j, lgn, lgc) -> None:
        """One chunk pair ``(c, c + s)`` of cross stage ``k`` (``s = 2**k``), in place; the
        last stage takes the maximum of the results' magnitudes (valid lanes only)."""
        lanes, w = self.lanes, self.width
        s = Signal(range(self.words), name="hs")
        lo = Signal(range(self.words), name="hlo")
        m.d.comb += [
            s.eq(1 << k),
            lo.eq(((j >> k) << (k + 1)) | (j & (s - 1))),
        ]
        hi = (lo + s)[: len(lo)]
        a, b = Array(words)[lo], Array(words)[hi]
        plus, minus, mags = [], [], []
        for q in range(lanes):
            p = Signal(signed(w), name=f"hp{q}")
            d = Signal(signed(w), name=f"hm{q}")
            m.d.comb += [p.eq(self._lane(a, q) + self._lane(b, q)),
                         d.eq(self._lane(a, q) - self._lane(b, q))]  # fmt: skip
            plus.append(p)
            minus.append(d)
            ok = q < (1 << lgn)
            for v in (p, d):
                mag = Signal(w, name=f"hmag{len(mags)}")
                m.d.comb += mag.eq(Mux(ok, Mux(v < 0, -v, v), 0))
                mags.append(mag)
        for idx in range(self.words):
            with m.If(lo == idx):
                m.d.sync += words[idx].eq(Cat(*plus))
            with m.Elif(hi == idx):
                m.d.sync += words[idx].eq(Cat(*minus))
        with m.If(k == lgc - 1):
            mx = self.mx
            for q, mag in enumerate(mags):
                nxt = Signal(w, name=f"hmx{q}")
                m.d.comb += nxt.eq(Mux(mag > mx, mag, mx))
                mx = nxt
            m.d.sync += self.mx.eq(mx)
