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
  ``raw`` asks for accumulators instead of requantized INT8. Weight groups
  (:func:`hwflow.numerics.weight_matmul`): ``wgrp`` marks every beat of a grouped op,
  ``glast`` a beat that ends a weight group (a row group's last beat ends its last group), and
  such a beat carries in ``gmult`` the group's multipliers, per chain ``slots`` uint8 (slot s:
  the chain's segment s, lane ``s*chains + c``); ignored on other beats.
* ``params`` (input stream ``p``): writes into the requantization parameter memory: one word
  of ``requantizers`` (R) lanes (15-bit unsigned multiplier, shift 0..47, INT32 bias per lane)
  at entry ``addr``, lane chunk ``chunk`` (lanes ``chunk*R .. chunk*R + R-1``). A beat's
  ``paddr`` (read with its row group's ``last`` beat) names the entry its results are
  requantized with; raw results read none. The memory has ``param_depth`` entries, sized from
  the preset's parameter buffer; loading it is the driver's (the compiler's) job, ahead of
  use, like any on-chip buffer.
* ``result`` (output stream ``o``): one *drain word*: R accumulator-wide signed values (the
  INT8 results sign-extended, or raw accumulators), ``last`` on a row group's final word,
  ``raw``. A row group at N leaves as :meth:`EngineParams.drain_cycles` words, token lane by
  token lane, R consecutive lanes per word (:meth:`EngineParams.drain_order`).

Row ``l`` of a row group at N (its *lane*) is segment ``l // chains`` of chain
``l % chains`` (segment-major), so at every N a chain's segments fill the same output-buffer
slots and no result crosses chains on its way out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data

from hwflow.config import HardwarePreset
from hwflow.costs import GROUP_STAGES, chain_latency, chain_modes
from hwflow.errors import UnsupportedError
from hwflow.hw.requant import PER_TOKEN_EXTRA_STAGES
from hwflow.numerics import ACT_MIN, GROUP_MULT_BITS, REQ_MULT_BITS, REQ_SHIFT_MAX

__all__ = ["ACC_BITS", "DUAL_ACT_MIN", "EngineParams", "dual_act_clamp"]

#: Accumulator (P register) width of each DSP kind: DSP48E2 48 bits, DSP58 58 bits.
ACC_BITS = {"DSP48E2": 48, "DSP58": 58}
#: Width of the DSP's A port: the two-products-per-DSP packing must fit in it (WP486).
_A_PORT_BITS = 27
#: Smallest activation a dual-INT8 engine multiplies (the engine clamps -128 to it on entry).
#: The DSP48E2 pre-adder computes ``AD = (a << F) + d`` in 27 bits (UG579, DSP48E2 pre-adder:
#: 27-bit AD into the 27 x 18 multiplier). With F = :attr:`EngineParams.dual_field` = 19 (a
#: 16-stage chain), ``-128 << 19`` is already -2**26, the most negative 27-bit value, and any
#: negative d overflows it; ``-127 << 19`` leaves 2**19 of room for every d in -128..127, so
#: with a >= -127 the operand is exact in 27 bits (8 + F <= 27). The numerics contract's
#: symmetric INT8 activations (:data:`hwflow.numerics.ACT_MIN`) pass unchanged.
DUAL_ACT_MIN = ACT_MIN
#: Largest |activation x weight| product: INT8 activations, weights in -127..127 (the
#: numerics contract never produces -128).
_MAX_PRODUCT = 128 * 127
#: Deepest requantization parameter memory (entries): one RAMB36 in its 512 x 72 shape.
_MAX_PARAM_DEPTH = 512
#: Widest signal Amaranth 0.5 emits (its netlist numbers a cell's output bits in 16 bits).
_MAX_SIGNAL_BITS = (1 << 16) - 1


def dual_act_clamp(x: np.ndarray) -> np.ndarray:
    """Activations as a dual-INT8 engine multiplies them: -128 becomes ``DUAL_ACT_MIN``."""
    return np.maximum(np.asarray(x), DUAL_ACT_MIN).astype(np.int8)


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
    requantizers: int  #: R: requantizers shared by the output lanes (values drained per cycle)
    param_depth: int = 64  #: row-group entries of the requantization parameter memory
    #: the per-token (dynamic activation scale) requantizer: each beat carries a multiplier
    #: and shift per token lane (``tmult``, ``tshift``), applied after the per-row ones
    per_token: bool = False
    #: activation lane width: 8 (INT8), or 9 for a matrix-vector engine that also multiplies
    #: UINT8 softmax probabilities (0..255) exactly (P x V; a dual-INT8 engine cannot: the
    #: packed operand ``a << F`` would outgrow the DSP48E2's 27-bit pre-adder)
    act_bits: int = 8

    def __post_init__(self) -> None:
        c = self.chain_length
        if self.act_bits not in (8, 9) or (self.dual_int8 and self.act_bits != 8):
            raise UnsupportedError(
                f"act_bits = {self.act_bits!r}: 8, or 9 on an engine without dual INT8 packing"
            )
        if self.m < 2:
            raise UnsupportedError(f"sparsity.m = {self.m!r}: the chain needs M >= 2")
        if not self.n_modes:
            raise UnsupportedError("no N:M mode divides the chain length")
        bad = [n for n in self.n_modes if c % n or n > self.m]
        if bad:
            raise UnsupportedError(f"N modes {bad} must divide chain_length {c} and be <= M")
        if self.param_depth < 2 or self.param_depth & (self.param_depth - 1):
            raise UnsupportedError(f"param_depth {self.param_depth!r} must be a power of two >= 2")
        if self.requantizers < 1 or self.requantizers & (self.requantizers - 1):
            raise UnsupportedError(
                f"requantizers = {self.requantizers!r} must be a power of two (a drain word is "
                "an aligned run of lanes)"
            )
        if self.chains % self.requantizers:
            raise UnsupportedError(
                f"requantizers = {self.requantizers!r} must divide chains = {self.chains!r} "
                "(every row group is a whole number of drain words)"
            )
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
        modes = chain_modes(hw, c)
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
            requantizers=min(eng.requantizers, n_chains),
            param_depth=depth,
        )

    def with_chains(self, chains: int) -> EngineParams:
        """The same engine with ``chains`` chains (a synthesis or simulation slice)."""
        return replace(self, chains=chains, requantizers=min(self.requantizers, chains))

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
        carries prefix sums over all C stages): C x 128 x 127 must lie in -2**(F-1) ..
        2**(F-1) - 1, one guard bit above the sum's magnitude bits; C = 16 gives F = 19, and
        ``8 + F`` = 27 bits of pre-adder operand (:data:`DUAL_ACT_MIN`)."""
        return (self.chain_length * _MAX_PRODUCT).bit_length() + 1

    @property
    def lanes(self) -> int:
        """Output lanes per token: rows of a row group at the smallest N."""
        return self.chains * self.chain_length // min(self.n_modes)

    @property
    def slots(self) -> int:
        """Output-buffer slots per chain and token: segments of a chain at the smallest N."""
        return self.chain_length // min(self.n_modes)

    @property
    def drain_depth(self) -> int:
        """Positions of one output-buffer column: a token lane's lanes over the R columns."""
        return self.lanes // self.requantizers

    @property
    def param_chunk(self) -> int:
        """Lanes of one parameter-memory word (one ``p`` beat): the requantizer count R."""
        return self.requantizers

    @property
    def param_chunks(self) -> int:
        """Parameter-memory words per entry (lane chunks of R)."""
        return self.lanes // self.requantizers

    def drain_cycles(self, n: int) -> int:
        """Output words of a row group at N: ``rows`` token lanes x ``chains*C/N`` lanes / R
        (:func:`hwflow.costs.drain_cycles` of the preset's engine)."""
        return self.rows * self.rows_per_beat(n) // self.requantizers

    @property
    def drain_max(self) -> int:
        return self.drain_cycles(min(self.n_modes))

    def drain_order(self, n: int) -> list[tuple[int, int]]:
        """(token lane, first lane) of each drain word of a row group at N, in output order."""
        r = self.requantizers
        return [(t, k * r) for t in range(self.rows) for k in range(self.rows_per_beat(n) // r)]

    @property
    def fifo_depth(self) -> int:
        """Output FIFO words: enough that the credit check never holds a row group's last beat
        when the output is always ready. A group's words hold credits from its last beat
        until they leave; the previous group's words all leave within ``latency`` cycles of
        the new last beat (last beats are at least the previous group's drain apart, and at
        most one word leaves per cycle), so ``latency + drain_max`` words, plus the
        :data:`~hwflow.costs.GROUP_STAGES` a row group of a weight-grouped op takes longer."""
        return self.latency + GROUP_STAGES + self.drain_max

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
        """Pipeline depth: cycles from a row group's last beat to its first output word,
        inclusive (:func:`hwflow.costs.chain_latency`)."""
        extra = PER_TOKEN_EXTRA_STAGES if self.per_token else 0
        return chain_latency(self.chain_length) + extra

    # ---------------------------------------------------------------------------------------
    # port layouts

    @property
    def beat_layout(self) -> data.StructLayout:
        c = self.chain_length
        fields: dict[str, Any] = {}
        if self.per_token:  # per token lane, read with a row group's last beat
            fields["tmult"] = data.ArrayLayout(unsigned(REQ_MULT_BITS), self.rows)
            fields["tshift"] = data.ArrayLayout(unsigned(REQ_SHIFT_MAX.bit_length()), self.rows)
        return data.StructLayout(
            {
                "act": data.ArrayLayout(data.ArrayLayout(signed(self.act_bits), self.m), self.rows),
                "wval": data.ArrayLayout(unsigned(c * 8), self.chains),
                "widx": data.ArrayLayout(unsigned(c * self.index_bits), self.chains),
                "nsel": unsigned(_sel_bits(len(self.n_modes))),
                "wsel": unsigned(_sel_bits(len(self.weight_bits))),
                "last": unsigned(1),
                "raw": unsigned(1),
                "paddr": unsigned(_sel_bits(self.param_depth)),
                "wgrp": unsigned(1),
                "glast": unsigned(1),
                "gmult": data.ArrayLayout(unsigned(self.slots * GROUP_MULT_BITS), self.chains),
                **fields,
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
        """One drain word: R accumulator-wide values (raw accumulators, or the INT8 results
        sign-extended), ``last`` on a row group's final word, ``raw``."""
        return data.StructLayout(
            {
                "data": data.ArrayLayout(signed(self.acc_bits), self.requantizers),
                "last": unsigned(1),
                "raw": unsigned(1),
            }
        )

    def result_values(self, words: list[dict], n: int) -> list[list[int]]:
        """A row group's decoded drain words at N as ``[token lane][lane]`` integers (lanes
        past the group's ``chains*C/N`` are zero, as the engine never computes them)."""
        out = [[0] * self.lanes for _ in range(self.rows)]
        for word, (t, first) in zip(words, self.drain_order(n), strict=True):
            out[t][first : first + self.requantizers] = list(word["data"])
        return out

    def check_ports(self) -> None:
        """Raise UnsupportedError if a port is wider than Amaranth 0.5 can emit (a signal of
        at most 65,535 bits): the beat port carries every chain's weights."""
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
            "requantizers": self.requantizers,
            "drain_cycles": {str(n): self.drain_cycles(n) for n in self.n_modes},
            "fifo_depth": self.fifo_depth,
            "latency": self.latency,
            "per_token": self.per_token,
            "act_bits": self.act_bits,
        }
