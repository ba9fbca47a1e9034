"""Engine parameters derived from a :class:`~hwflow.config.HardwarePreset`, and the port layouts.

One frozen :class:`EngineParams` describes a DSP-chain engine completely; the Amaranth
components, the Verilog manifest, the cocotb benches and the synthesis slices all take it, and
it is built only from the preset objects the compiler and the cycle model use
(:meth:`EngineParams.from_preset`).

Port layouts (see :mod:`hwflow.hw.engine` for the timing):

* ``beat`` (input stream ``i``): one M-wide activation block per token lane, and per chain
  ``chain_length`` packed weight values (:func:`hwflow.numerics.pack_bits` at the op's width,
  the low ``C*bits`` bits of a ``C*8``-bit field) plus packed ``log2(M)``-bit indices (ignored
  for dense ops, whose indices are implicit); ``nsel`` indexes :attr:`EngineParams.n_modes`,
  ``wsel`` indexes :attr:`EngineParams.weight_bits`; ``last`` marks a row group's last block;
  ``raw`` asks for accumulators instead of requantized INT8.
* ``params`` (input stream ``p``): writes into the requantization parameter memory: one
  ``param_chunk`` of lanes (15-bit unsigned multiplier, shift 0..47, INT32 bias per lane) at
  entry ``addr``. A beat's ``paddr`` (read with its row group's ``last`` beat) names the entry
  its results are requantized with; raw results read none. The memory has ``param_depth``
  entries, sized from the preset's parameter buffer; loading it is the driver's (the
  compiler's) job, ahead of use, like any on-chip buffer.
* ``result`` (output stream ``o``): per output lane an accumulator-wide signed value for token
  lane 0 (the INT8 result sign-extended, or the raw accumulator) and INT8 results for token
  lanes 1.. (zero for raw ops, which carry one token: the LM head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data

from hwflow.config import HardwarePreset
from hwflow.costs import chain_latency
from hwflow.errors import UnsupportedError
from hwflow.numerics import REQ_MULT_BITS, REQ_SHIFT_MAX

__all__ = ["ACC_BITS", "EngineParams"]

#: Accumulator (P register) width of each DSP kind: DSP48E2 48 bits, DSP58 58 bits.
ACC_BITS = {"DSP48E2": 48, "DSP58": 58}
#: Width of the DSP's A port: the two-products-per-DSP packing must fit in it (WP486).
_A_PORT_BITS = 27
#: Largest |activation x weight| product: INT8 activations, weights in -127..127 (the
#: numerics contract never produces -128).
_MAX_PRODUCT = 128 * 127
#: Deepest requantization parameter memory (entries): one RAMB36 in its 512 x 72 shape.
_MAX_PARAM_DEPTH = 512
#: Widest signal Amaranth 0.5 emits (its netlist numbers a cell's output bits in 16 bits).
_MAX_SIGNAL_BITS = (1 << 16) - 1


def _sel_bits(options: int) -> int:
    return max(1, math.ceil(math.log2(options)))


@dataclass(frozen=True)
class EngineParams:
    """Every parameter of one chain engine (matrix-vector when ``rows == 1``)."""

    kind: Literal["mv", "mpe"]
    preset: str
    chains: int
    chain_length: int
    rows: int
    dual_int8: bool
    m: int
    n_modes: tuple[int, ...]
    weight_bits: tuple[int, ...]
    dsp_kind: Literal["DSP48E2", "DSP58"]
    param_depth: int = 64  #: row-group entries of the requantization parameter memory

    def __post_init__(self) -> None:
        c = self.chain_length
        if self.m < 2:
            raise UnsupportedError(f"sparsity.m = {self.m!r}: the chain needs M >= 2")
        if not self.n_modes:
            raise UnsupportedError("no N:M mode divides the chain length")
        bad = [n for n in self.n_modes if c % n or n > self.m]
        if bad:
            raise UnsupportedError(f"N modes {bad} must divide chain_length {c} and be <= M")
        if self.param_depth < 2 or self.param_depth & (self.param_depth - 1):
            raise UnsupportedError(f"param_depth {self.param_depth!r} must be a power of two >= 2")
        if self.dual_int8 and self.rows % 2:
            raise UnsupportedError(f"dual_int8 needs an even number of rows, got {self.rows!r}")
        if self.dual_int8 and 8 + self.dual_field > _A_PORT_BITS:
            raise UnsupportedError(
                f"dual INT8 packing of a {self.chain_length}-stage chain needs a "
                f"{self.dual_field}-bit field: INT8 << {self.dual_field} overflows the "
                f"{_A_PORT_BITS}-bit A port"
            )

    @classmethod
    def from_preset(
        cls, hw: HardwarePreset, kind: Literal["mv", "mpe"], chains: int | None = None
    ) -> EngineParams:
        """The ``mv`` or ``mpe`` engine of ``hw``; ``chains`` overrides the count (a slice)."""
        if kind not in ("mv", "mpe"):
            raise UnsupportedError(f"engine {kind!r} unknown (allowed: 'mv', 'mpe')")
        eng = getattr(hw, kind)
        c, m = eng.chain_length, hw.sparsity.m
        modes = {n for n in hw.sparsity.n_allowed if c % n == 0}
        if c % m == 0:
            modes.add(m)  # dense runs as N = M with implicit indices
        if chains is not None and chains < 1:
            raise UnsupportedError(f"chains = {chains!r} must be >= 1")
        n_chains = chains or eng.chains
        # the requantization parameter memory: as many row groups of 64-bit lane entries as
        # the preset's parameter buffer holds for the whole engine (a slice keeps the depth;
        # a power of two, 2..512: one block RAM deep)
        fit = hw.buffers.bytes("param") // (eng.chains * c // min(modes) * 8)
        depth = min(_MAX_PARAM_DEPTH, 1 << max(1, fit.bit_length() - 1))
        return cls(
            kind=kind,
            preset=hw.name,
            chains=n_chains,
            chain_length=c,
            rows=1 if kind == "mv" else eng.rows,
            dual_int8=eng.dual_int8 and kind == "mpe",
            m=m,
            n_modes=tuple(sorted(modes)),
            weight_bits=tuple(sorted(hw.weight_bits)),
            dsp_kind=hw.board.dsp_kind,
            param_depth=depth,
        )

    def with_chains(self, chains: int) -> EngineParams:
        """The same engine with ``chains`` chains (a synthesis or simulation slice)."""
        return replace(self, chains=chains)

    # ---------------------------------------------------------------------------------------
    # derived sizes

    @property
    def acc_bits(self) -> int:
        return ACC_BITS[self.dsp_kind]

    @property
    def index_bits(self) -> int:
        return int(math.log2(self.m))

    @property
    def dual_field(self) -> int:
        """Bit offset of the upper token in a dual-INT8 DSP product (WP486 packing): wide enough
        for the signed sum of the lower-token products along the whole chain (the cascade
        carries prefix sums over all C stages)."""
        return (self.chain_length * _MAX_PRODUCT).bit_length() + 1

    @property
    def lanes(self) -> int:
        """Output lanes per token: rows of a row group at the smallest N."""
        return self.chains * self.chain_length // min(self.n_modes)

    @property
    def param_chunk(self) -> int:
        """Lanes written by one ``p`` beat (the parameter port stays narrow on big engines)."""
        return math.gcd(self.lanes, 16)

    @property
    def param_chunks(self) -> int:
        return self.lanes // self.param_chunk

    def rows_per_beat(self, n: int) -> int:
        """Output rows one beat advances at N (the row-group size)."""
        return self.chains * self.chain_length // n

    @property
    def seg_ends(self) -> tuple[int, ...]:
        """Stages that end a segment for some N mode: where accumulators sit."""
        c = self.chain_length
        return tuple(j for j in range(c) if any((j + 1) % n == 0 for n in self.n_modes))

    @property
    def dsps(self) -> int:
        per_stage = self.rows // 2 if self.dual_int8 else self.rows
        return self.chains * self.chain_length * per_stage

    @property
    def latency(self) -> int:
        """Pipeline depth: cycles from a row group's last beat to its result, inclusive."""
        return chain_latency(self.chain_length)

    # ---------------------------------------------------------------------------------------
    # port layouts

    @property
    def beat_layout(self) -> data.StructLayout:
        c = self.chain_length
        return data.StructLayout(
            {
                "act": data.ArrayLayout(data.ArrayLayout(signed(8), self.m), self.rows),
                "wval": data.ArrayLayout(unsigned(c * 8), self.chains),
                "widx": data.ArrayLayout(unsigned(c * self.index_bits), self.chains),
                "nsel": unsigned(_sel_bits(len(self.n_modes))),
                "wsel": unsigned(_sel_bits(len(self.weight_bits))),
                "last": unsigned(1),
                "raw": unsigned(1),
                "paddr": unsigned(_sel_bits(self.param_depth)),
            }
        )

    @property
    def params_layout(self) -> data.StructLayout:
        w = self.param_chunk
        return data.StructLayout(
            {
                "addr": unsigned(_sel_bits(self.param_depth)),
                "chunk": unsigned(_sel_bits(self.param_chunks)),
                "mult": data.ArrayLayout(unsigned(REQ_MULT_BITS), w),
                "shift": data.ArrayLayout(unsigned(REQ_SHIFT_MAX.bit_length()), w),
                "bias": data.ArrayLayout(signed(32), w),
            }
        )

    @property
    def result_layout(self) -> data.StructLayout:
        """Token lane 0 as accumulator-wide values (raw accumulators, or the INT8 results
        sign-extended); token lanes 1.. as INT8 (zero in raw mode: a raw op, the LM head,
        has one token). Full width only where it is needed keeps big engines' ports small."""
        fields: dict[str, Any] = {"acc": data.ArrayLayout(signed(self.acc_bits), self.lanes)}
        if self.rows > 1:  # no zero-width field for one token lane
            fields["data"] = data.ArrayLayout(
                data.ArrayLayout(signed(8), self.lanes), self.rows - 1
            )
        fields["raw"] = unsigned(1)
        return data.StructLayout(fields)

    def result_values(self, result: dict) -> list[list[int]]:
        """A decoded result as ``[token lane][lane]`` integers."""
        return [list(result["acc"])] + [list(row) for row in result.get("data", [])]

    def check_ports(self) -> None:
        """Raise UnsupportedError if a port is wider than Amaranth 0.5 can emit (a signal of
        at most 65,535 bits): the result port is ``rows * lanes * acc_bits`` wide."""
        for port, layout in (("i", self.beat_layout), ("o", self.result_layout)):
            width = Shape.cast(layout).width
            if width > _MAX_SIGNAL_BITS:
                raise UnsupportedError(
                    f"{self.preset} {self.kind} engine: port {port} would be {width} bits wide, "
                    f"more than the {_MAX_SIGNAL_BITS} bits Amaranth 0.5 emits in one signal "
                    f"({self.chains} chains); generate a slice with fewer chains"
                )

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for the generation manifest."""
        return {
            "kind": self.kind,
            "preset": self.preset,
            "chains": self.chains,
            "chain_length": self.chain_length,
            "rows": self.rows,
            "dual_int8": self.dual_int8,
            "m": self.m,
            "n_modes": list(self.n_modes),
            "weight_bits": list(self.weight_bits),
            "dsp_kind": self.dsp_kind,
            "acc_bits": self.acc_bits,
            "lanes": self.lanes,
            "dsps": self.dsps,
            "dual_field": self.dual_field if self.dual_int8 else None,
            "param_depth": self.param_depth,
            "param_chunk": self.param_chunk,
            "latency": self.latency,
        }
