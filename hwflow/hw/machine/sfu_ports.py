"""Buffer port signatures of the RTL machine (seam 2), as the SFU uses them.

Local stand-in for the top level's ``bus.py`` until it lands: the same member names and
directions (unit side). ``ReadPort``: ``addr`` (word index), ``en``; ``grant`` (the request
was accepted this cycle); ``data`` valid in the cycle after a granted request. ``WritePort``:
``addr``, ``data``, ``strb`` (byte enables), ``en``; ``grant``. A unit keeps ``en`` and its
address/data stable until ``grant``.
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ReadPort", "WritePort"]


def ReadPort(words_bits: int, word_bytes: int) -> wiring.Signature:
    """Unit side of one buffer's read port."""
    return wiring.Signature(
        {
            "addr": Out(words_bits),
            "en": Out(1),
            "grant": In(1),
            "data": In(8 * word_bytes),
        }
    )


def WritePort(words_bits: int, word_bytes: int) -> wiring.Signature:
    """Unit side of one buffer's write port (byte enables in ``strb``)."""
    return wiring.Signature(
        {
            "addr": Out(words_bits),
            "data": Out(8 * word_bytes),
            "strb": Out(word_bytes),
            "en": Out(1),
            "grant": In(1),
        }
    )
