"""HBM allocation and the byte formats of everything the program reads from HBM.

One linear HBM address space, interleaved over the preset's pseudo-channels every
``hbm.interleave_bytes`` (:func:`hwflow.isa.hbm_channel`), so every region larger than
``channels * interleave_bytes`` is spread evenly over all channels. Regions, in order:

``L{l}``        one per layer: the layer's parameter blob, then the weight tiles of its linear
                ops in execution order. Layers of a *run* (consecutive layers with the same
                compression of every op) have identical layouts, so a run is one region table
                entry per layer at a constant stride: the program loops over the run and
                advances a base register by that stride. The stride is a multiple of the
                channel map's period (``channels * interleave_bytes``), so the layers of a run
                also touch the same channels in the same way (a cycle model reuses one).
``final``       the final norm's parameters and the head's weight tiles.
``rope``        RoPE cos/sin rows (LLaMA family): ``max_len`` rows of ``hd/2`` int16 cos then
                ``hd/2`` int16 sin (Q14). Starts at a period boundary.
``kv``          the KV cache: per layer K then V, each ``[kv_heads][max_len][head_dim]`` INT8;
                the heads ``kv_head_bytes`` apart: whole granules, a count coprime with the
                channel count, so the heads of a layer start on distinct channels and its K/V
                loads spread over all of them, the V heads ``kv_v_offset`` after the K heads,
                each half the channels away from its K head; layers ``kv_layer_bytes``
                apart, a multiple of the period. A head's rows start on a granule boundary, so
                the rows of positions ``16k .. 16k+15`` (one decode bucket) share one channel
                whenever ``16 * head_dim`` divides the granule.
                A program compiled for a batch of B sequences holds B such caches (one per
                sequence, the KV-cache *slot*), ``kv_seq_bytes`` apart (a multiple of the period,
                so every slot touches the channels alike).
                With rotated keys (plan ``method.keys: rotated``, :func:`key_row_bytes`) a K row
                is a *record* of ``head_dim + 4`` bytes: the key's row factor (uint16 ``m``, int16
                ``e``, :data:`hwflow.isa.ROW_FACTOR_BYTES`) then its INT8 codes, position ``p`` at
                ``p * (head_dim + 4)`` in its head; ``kv_head_bytes`` (the K heads' stride) is
                then the padded size of ``max_len`` records, ``kv_v_head_bytes`` the V heads'.
``input``       ``max(max_len, B)`` rows of INT32 embeddings (``4 * hidden`` bytes each; the
                residual stream's format, written by the host before a step).
``logits``      ``B`` rows of ``vocab`` INT32 logits: the step's last token (prefill), one row
                per sequence (batched decode); read by the host.
``program``     every template's instruction words (little-endian 32-bit), each template at a
                multiple of ``ALIGN`` in template order (:func:`place_program`); placed by the
                compiler once the templates exist, after everything above (kind ``program``).
                The machine fetches the template serving a step from here.

Weight tile format (the blob one LD moves and one MM/MV op consumes), for ``R`` output rows
of an op keeping ``N`` of every ``M`` weights along K (dense: ``N = M``, the preset's
``sparsity.m``) at ``bits`` bits, beat-major so that one engine beat's weights are one
contiguous record (:class:`BeatGeometry`: a *stripe* of ``S`` chains of ``C`` slots, ``S`` the
greatest common divisor of the MV and MM engines' chain counts): the rows form stripes of
``S*C/N`` rows (the last may be shorter); per stripe, per block of ``M`` reduction elements (a
dense row's last block zero padded), one *record*: the values of the stripe's rows, row by row,
the block's ``N`` values of each row (``numerics.pack_bits`` at ``bits``, padded to a byte),
then their in-block indices the same way at ``log2(M)`` bits (absent when dense). Slot ``j`` of a record belongs to
chain ``j // C``, so chain ``c`` holds the rows ``c*C/N .. (c+1)*C/N - 1`` of the stripe, one per
N-segment. Then per row an INT32 bias (when the op has one), then per row a uint16 multiplier,
then per row an int8 shift (every linear op and the head: all are requantized in two stages,
:func:`hwflow.numerics.linear_out`); then, when the op has a weight group G, the K/G group
multipliers of every row, one uint8 each (:data:`hwflow.numerics.GROUP_MULT_BITS`;
:func:`hwflow.numerics.weight_matmul`), a separate trailing section ordered like the records:
per stripe, per group, the stripe's rows' multipliers in row order (what one group end of a
row group multiplies with: one contiguous part, read in whole buffer words). :meth:`TileSpec.sections`
gives the offsets,
:func:`encode_tile` writes and :meth:`TileSpec.decode` reads the format.

Parameter blob of a layer (:func:`param_blob`, little-endian): per norm (``norm1``,
``norm2``) an int32 pre-shift then the INT16 gains (``hidden`` of them, padded to 4 bytes);
per linear op its row-stage guard (int32); ``scores``: per head (mult, shift) int32 (rotated
keys: (mult, shift, guard)); ``pv``: per head (mult, shift, guard) int32; ``act``: the SiLU
index (mult, shift) int32 (zero for ReLU); with rotated keys last ``rope_q``: per q head the
(mult, shift) int32 of the SFU's ``ropeq``. The ``final`` region starts with the final blob (:func:`final_blob`): the
final norm's record then the head's guard. Table lookups (softmax EXP2, SiLU sigmoid) are
ROMs of the special-function unit (the numerics module's tables), not parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from hwflow.config import HardwarePreset, LinearQuant, ModelConfig
from hwflow.costs import effective_nm
from hwflow.errors import CapacityError, ConfigError
from hwflow.isa import ROW_FACTOR_BYTES, Region, Template
from hwflow.model import BIAS_BYTES, group_scale_bytes, has_bias
from hwflow.numerics import GATE_BITS, RESIDUAL_BITS, nm_expand

if TYPE_CHECKING:
    from hwflow.compress import QuantizedModel

__all__ = [
    "ALIGN",
    "WEIGHT_SLOTS",
    "BeatGeometry",
    "HbmLayout",
    "ParamBlob",
    "TileSpec",
    "build_hbm_image",
    "encode_tile",
    "final_blob",
    "key_row_bytes",
    "layer_runs",
    "linear_out_bits",
    "norm_record_bytes",
    "pack_rows",
    "param_blob",
    "place_program",
    "plan_hbm",
    "program_image",
    "unpack_rows",
]

ALIGN = 64  #: byte alignment of every region and tile
#: The weight buffer is split into this many tile slots, filled round robin (LD runs up to
#: ``WEIGHT_SLOTS - 1`` tiles ahead of the engine). Two is best on the shipped presets: the cycle
#: model gives LLaMA-2-7B/flightllm/u280 decode (prefill 128, decode 16) 90% of the HBM roofline
#: with 2 slots, 86% with 3 and 80% with 4, because smaller tiles cut the DSP chains' row groups
#: short.
WEIGHT_SLOTS = 2


@dataclass(frozen=True)
class ParamBlob:
    """Byte offsets of the records of a parameter blob (see the module doc) and its size."""

    offsets: Mapping[str, int]
    size: int

    def __getitem__(self, key: str) -> int:
        return self.offsets[key]


def _records(items: list[tuple[str, int]]) -> ParamBlob:
    off: dict[str, int] = {}
    at = 0
    for name, size in items:
        off[name] = at
        at += -(-size // 4) * 4
    return ParamBlob(MappingProxyType(off), _align(at))


def norm_record_bytes(cfg: ModelConfig) -> int:
    """A norm's record: int32 pre-shift, then ``hidden`` INT16 gains."""
    return 4 + 2 * cfg.hidden


def linear_out_bits(op: str, rotated: bool = False) -> int:
    """Output width of a linear op (or ``"head"``) in the numerics contract: q/k/v INT8 (q and
    k INT16 with ``rotated`` keys: RoPE and the Hadamard transform run on INT16), gate/up INT16
    (the SiLU input), o/down INT32 (residual-stream branches), the head's INT32 logits."""
    if op in ("o", "down", "head"):
        return RESIDUAL_BITS
    return GATE_BITS if op in ("gate", "up") or (rotated and op in ("q", "k")) else 8


def key_row_bytes(cfg: ModelConfig, rotated: bool = False) -> int:
    """Bytes of one key (one KV head at one position) in the KV cache: ``head_dim`` INT8
    codes, with ``rotated`` keys preceded by their row factor (module doc, ``kv``)."""
    return cfg.head_dim + (ROW_FACTOR_BYTES if rotated else 0)


def param_blob(cfg: ModelConfig, rotated: bool = False) -> ParamBlob:
    """The layout of a layer's parameter blob (see the module doc); ``rotated`` keys add the
    scores' guard per head and the ``rope_q`` record."""
    items = [("norm1", norm_record_bytes(cfg)), ("norm2", norm_record_bytes(cfg))]
    items += [(f"{op}.guard", 4) for op in cfg.linear_ops]
    items += [("scores", (12 if rotated else 8) * cfg.heads), ("pv", 12 * cfg.heads), ("act", 8)]
    if rotated:
        items.append(("rope_q", 8 * cfg.heads))
    return _records(items)


def final_blob(cfg: ModelConfig) -> ParamBlob:
    """The layout of the final blob: the final norm's record, then the head's guard."""
    return _records([("norm", norm_record_bytes(cfg)), ("head.guard", 4)])


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _round(n: int, to: int) -> int:
    return -(-n // to) * to


def _kv_head_stride(nbytes: int, hw: HardwarePreset) -> int:
    """Bytes between kv heads: ``nbytes`` rounded up to whole granules, then to a granule count
    coprime with the channel count, so the heads of a layer start on distinct channels."""
    g, c = hw.hbm.interleave_bytes, hw.hbm.channels
    n = -(-nbytes // g)
    while math.gcd(n, c) != 1:
        n += 1
    return n * g


def pack_rows(fields: np.ndarray, bits: int) -> np.ndarray:
    """``numerics.pack_bits`` applied to every row, rows padded to whole bytes: [rows, bytes]."""
    fields = np.asarray(fields, np.int64)
    rows, n = fields.shape
    nbytes = -(-n * bits // 8)
    bitsarr = ((fields[:, :, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(rows, -1)
    pad = nbytes * 8 - bitsarr.shape[1]
    bitsarr = np.concatenate([bitsarr, np.zeros((rows, pad), np.uint8)], axis=1)
    return np.packbits(bitsarr, axis=1, bitorder="little")


def unpack_rows(data: np.ndarray, bits: int, rows: int, n: int, signed: bool) -> np.ndarray:
    """Inverse of :func:`pack_rows` on the bytes of ``rows`` rows of ``n`` fields (int64)."""
    nbytes = -(-n * bits // 8)
    b = np.unpackbits(np.asarray(data, np.uint8).reshape(rows, nbytes), axis=1, bitorder="little")
    b = b[:, : n * bits].reshape(rows, n, bits).astype(np.int64)
    v = (b << np.arange(bits)).sum(axis=2)
    if signed:
        v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
    return v


@dataclass(frozen=True)
class BeatGeometry:
    """How a weight tile's values and indices group into engine beats (the module doc's weight
    tile format): ``chains`` chains of a *stripe* (the greatest common divisor of the MV and
    MM engines' chain counts, so one stripe record serves both), ``chain_length`` C slots per
    chain, the preset's sparsity block ``m``."""

    chains: int
    chain_length: int
    m: int

    @classmethod
    def from_preset(cls, hw: HardwarePreset) -> BeatGeometry:
        if hw.mv.chain_length != hw.mpe.chain_length:
            raise ConfigError(
                f"preset {hw.name}: mv.chain_length {hw.mv.chain_length} and mpe.chain_length "
                f"{hw.mpe.chain_length} differ; one weight tile format serves both engines"
            )
        return cls(math.gcd(hw.mv.chains, hw.mpe.chains), hw.mv.chain_length, hw.sparsity.m)

    def per_block(self, n: int, m: int) -> int:
        """Values of one row per block of ``self.m`` reduction elements (dense: ``self.m``)."""
        if n == m:
            return self.m
        if m != self.m:
            raise ConfigError(f"{n}:{m} sparsity on a preset with sparsity.m = {self.m}")
        return n

    def stripe_rows(self, n: int, m: int) -> int:
        """Output rows of one stripe: ``chains * C / N``."""
        return self.chains * self.chain_length // self.per_block(n, m)

    def blocks(self, k: int) -> int:
        """Reduction blocks of ``self.m`` (a dense row's last block is zero padded)."""
        return -(-k // self.m)

    def record_bytes(self, n: int, m: int, bits: int, rows: int | None = None) -> tuple[int, int]:
        """(value bytes, index bytes) of one record (one beat's weights) of a stripe of
        ``rows`` rows (default a whole stripe)."""
        slots = (self.stripe_rows(n, m) if rows is None else rows) * self.per_block(n, m)
        ib = 0 if n == m else int(math.log2(self.m))
        return -(-slots * bits // 8), -(-slots * ib // 8)

    def stripes(self, rows: int, n: int, m: int) -> list[int]:
        """Rows of each stripe of a tile of ``rows`` rows (only the last may be partial)."""
        sr = self.stripe_rows(n, m)
        return [min(sr, rows - r0) for r0 in range(0, rows, sr)]


@dataclass(frozen=True)
class TileSpec:
    """The row tiling of one linear op: tiles of ``rows`` output rows (the last may be
    shorter), each :meth:`tile_bytes` long, at byte offset ``offset`` inside its layer region."""

    name: str  #: op name inside the layer ("q", ..., or "head")
    out: int
    k: int
    quant: LinearQuant
    bias: bool
    requant: bool
    rows: int  #: rows per full tile
    offset: int  #: of the first tile within the region
    geo: BeatGeometry  #: the beat grouping of the values and indices

    @property
    def kept(self) -> int:
        return self.k // self.quant.m * self.quant.n

    @property
    def grow(self) -> int:
        """Bytes of one row's group multipliers (the trailing section; 0 without a group)."""
        return group_scale_bytes(self.k, self.quant.group)

    @property
    def row_bytes(self) -> int:
        """Bytes per row of a tile, on average over whole stripes (the tile sizing's guide)."""
        q = self.quant
        sr = self.geo.stripe_rows(q.n, q.m)
        return -(-self.tile_bytes(sr) // sr)

    def tile_bytes(self, rows: int) -> int:
        """Bytes of a tile of ``rows`` rows."""
        q = self.quant
        return self.sections(rows, self.k, q.n, q.m, q.bits, self.bias, self.geo, q.group)["end"]

    @property
    def tiles(self) -> list[tuple[int, int, int]]:
        """(first row, rows, byte offset in region) of every tile."""
        out, at = [], self.offset
        for r0 in range(0, self.out, self.rows):
            r = min(self.rows, self.out - r0)
            out.append((r0, r, at))
            at += _align(self.tile_bytes(r))
        return out

    @property
    def nbytes(self) -> int:
        return sum(_align(self.tile_bytes(r)) for _, r, _ in self.tiles)

    @staticmethod
    def sections(
        rows: int,
        k: int,
        n: int,
        m: int,
        bits: int,
        bias: bool,
        geo: BeatGeometry,
        group: int | None = None,
    ) -> dict[str, int]:
        """Byte offset of each section of a tile of ``rows`` rows (and ``"end"``, its size):
        ``beats`` (one record per stripe and block, stripe-major), ``bias`` (empty without),
        ``mult`` (uint16 per row), ``shift`` (int8 per row), ``gmult`` (K/G uint8 group
        multipliers per row; empty without a weight group). The format's one definition,
        read by :func:`encode_tile`, :meth:`decode` and the RTL matmul unit's bench."""
        nb = geo.blocks(k)
        beats = sum(nb * sum(geo.record_bytes(n, m, bits, r)) for r in geo.stripes(rows, n, m))
        at, out = 0, {}
        for name, size in (
            ("beats", beats),
            ("bias", rows * BIAS_BYTES if bias else 0),
            ("mult", 2 * rows),
            ("shift", rows),
            ("gmult", rows * group_scale_bytes(k, group)),
        ):
            out[name] = at
            at += size
        out["end"] = at
        return out

    @staticmethod
    def decode(
        blob: np.ndarray,
        rows: int,
        k: int,
        n: int,
        m: int,
        bits: int,
        bias: bool,
        geo: BeatGeometry,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """The weight tile in ``blob`` (uint8, at least its size): dense INT8 codes
        [rows, k] (N:M indices expanded), the INT32 bias per row (None without), the uint16
        multiplier and int8 shift per row, all int64 but the codes."""
        blob = np.asarray(blob, np.uint8).ravel()
        at = TileSpec.sections(rows, k, n, m, bits, bias, geo)
        npb, nb = geo.per_block(n, m), geo.blocks(k)
        ib = int(math.log2(m)) if n != m else 0
        vals, idx, pos = [], [], at["beats"]
        for r in geo.stripes(rows, n, m):
            vb, xb = geo.record_bytes(n, m, bits, r)
            recs = blob[pos : pos + nb * (vb + xb)].reshape(nb, vb + xb)
            pos += nb * (vb + xb)
            for part, width, signed, out in ((recs[:, :vb], bits, True, vals),
                                             (recs[:, vb:], ib, False, idx)):  # fmt: skip
                if width:
                    f = unpack_rows(part, width, nb, r * npb, signed).reshape(nb, r, npb)
                    out.append(f.transpose(1, 0, 2).reshape(r, nb * npb))
        v = np.concatenate(vals) if vals else np.zeros((0, nb * npb), np.int64)
        if not vals:
            codes = np.zeros((0, k), np.int8)
        elif n != m:
            codes = nm_expand(v.astype(np.int8), np.concatenate(idx).astype(np.uint8), n, m)
        else:
            codes = v[:, :k].astype(np.int8)
        b = None
        if bias:
            b = blob[at["bias"] : at["mult"]].copy().view("<i4").astype(np.int64)
        mult = blob[at["mult"] : at["shift"]].copy().view("<u2").astype(np.int64)
        shift = blob[at["shift"] : at["gmult"]].copy().view(np.int8).astype(np.int64)
        return codes, b, mult, shift

    @staticmethod
    def decode_groups(
        blob: np.ndarray,
        rows: int,
        k: int,
        n: int,
        m: int,
        geo: BeatGeometry,
        sections: Mapping[str, int],
        group: int | None,
    ) -> np.ndarray | None:
        """The group multipliers [rows, K/G] (int64) of the tile in ``blob`` whose
        :meth:`sections` are ``sections`` (stored stripe by stripe, group by group: the
        module doc); None without a weight group."""
        if group is None:
            return None
        blob = np.asarray(blob, np.uint8).ravel()
        g = group_scale_bytes(k, group)
        out, pos = [], sections["gmult"]
        for r in geo.stripes(rows, n, m):
            out.append(blob[pos : pos + r * g].reshape(g, r).T)
            pos += r * g
        if not out:
            return np.zeros((0, g), np.int64)
        return np.concatenate(out).astype(np.int64)


def encode_tile(
    values: np.ndarray,
    indices: np.ndarray | None,
    bias: np.ndarray | None,
    mult: np.ndarray,
    shift: np.ndarray,
    n: int,
    m: int,
    bits: int,
    geo: BeatGeometry,
    gmult: np.ndarray | None = None,
) -> np.ndarray:
    """The bytes of a weight tile (the module doc's format) of ``values`` [rows, kept] (dense:
    the codes [rows, k]), N:M ``indices`` [rows, kept] (None when dense), the INT32 ``bias``
    per row (or None), uint16 ``mult`` and int8 ``shift`` per row, and the uint8 group
    multipliers [rows, K/G] (None without a weight group)."""
    values = np.asarray(values, np.int64)
    rows = values.shape[0]
    npb = geo.per_block(n, m)
    nb = -(-values.shape[1] // npb)

    def records(f: np.ndarray, width: int, r0: int, r: int) -> np.ndarray:
        full = np.zeros((r, nb * npb), np.int64)
        full[:, : f.shape[1]] = f[r0 : r0 + r]
        full = full.reshape(r, nb, npb).transpose(1, 0, 2)
        return pack_rows(full.reshape(nb, r * npb), width)

    parts, r0 = [], 0
    for r in geo.stripes(rows, n, m):
        rec = [records(values, bits, r0, r)]
        if n != m:
            assert indices is not None
            rec.append(records(np.asarray(indices, np.int64), int(math.log2(m)), r0, r))
        parts.append(np.concatenate(rec, axis=1).ravel())
        r0 += r
    out = [np.concatenate(parts)] if parts else []
    if bias is not None:
        out.append(np.asarray(bias, "<i4").view(np.uint8))
    out.append(np.asarray(mult, "<u2").view(np.uint8))
    out.append(np.asarray(shift, "<i1").view(np.uint8))
    if gmult is not None:  # stripe by stripe, group by group, the stripe's rows
        gm, r0 = np.asarray(gmult, "u1"), 0
        for r in geo.stripes(rows, n, m):
            out.append(np.ascontiguousarray(gm[r0 : r0 + r].T).ravel())
            r0 += r
    return np.concatenate(out)


def layer_runs(cfg: ModelConfig, quant: dict[tuple[int, str], LinearQuant]) -> list[range]:
    """Maximal runs of consecutive layers whose every linear op has the same compression."""
    runs: list[range] = []
    start = 0
    for li in range(1, cfg.layers + 1):
        if li == cfg.layers or any(quant[(li, op)] != quant[(start, op)] for op in cfg.linear_ops):
            runs.append(range(start, li))
            start = li
    return runs


@dataclass(frozen=True)
class HbmLayout:
    """Where everything lives in HBM (frozen once planned)."""

    regions: tuple[Region, ...]
    runs: tuple[tuple[int, int, int], ...]  #: (first layer, layers, region stride bytes)
    tiles: Mapping[int, tuple[TileSpec, ...]]  #: per layer, the tiling of its linear ops
    head: TileSpec
    kv_layer_bytes: int  #: K and V of one layer (stride between layers, see the module doc)
    kv_head_bytes: int  #: stride between kv heads: one head's [max_len, head_dim], padded
    rope_row: int
    total: int
    kv_v_offset: int = 0  #: from a layer's K heads to its V heads (see the module doc)
    batch: int = 1  #: sequences (KV-cache slots) the layout holds
    kv_seq_bytes: int = 0  #: stride between the KV caches of two sequences (all layers)
    rotated: bool = False  #: rotated keys: K records with their row factors, q/k INT16
    kv_v_head_bytes: int = 0  #: stride between V heads (rotated keys: K's is longer); 0: K's

    def head_stride(self, which: str) -> int:
        """Bytes between the KV heads of ``which`` ("K" or "V") of a layer."""
        if which == "V":
            return self.kv_v_head_bytes or self.kv_head_bytes
        return self.kv_head_bytes

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)

    def channel_bytes(self, channels: int, interleave: int) -> list[int]:
        """Bytes of all regions held by each channel (the allocation's balance)."""
        per = [0] * channels
        granules = -(-self.total // interleave)
        full, rest = divmod(granules, channels)
        for c in range(channels):
            per[c] = (full + (1 if c < rest else 0)) * interleave
        return per


def _tile_rows(probe: TileSpec, slot: int, chain_rows: int, what: str) -> int:
    """Rows per weight tile: as many as fit one weight slot, a multiple of the engine's rows per
    beat when possible. CapacityError when not even one row fits."""
    out = probe.out
    if probe.tile_bytes(1) > slot:
        raise CapacityError(
            f"{what}: one weight row needs {probe.tile_bytes(1)} bytes but a weight slot "
            f"(1/{WEIGHT_SLOTS} of buffers.weight_kib) holds {slot} bytes"
        )
    fit = max(1, min(out, slot // probe.row_bytes))
    while fit < out and probe.tile_bytes(fit + 1) <= slot:
        fit += 1
    while probe.tile_bytes(fit) > slot:
        fit -= 1
    rows = min(out, fit)
    if rows < out and rows >= chain_rows:
        rows -= rows % chain_rows
    return rows


def _size(n: int) -> str:
    """Bytes in the largest binary unit that keeps a digit before the point."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def plan_hbm(
    cfg: ModelConfig,
    quant: dict[tuple[int, str], LinearQuant],
    head_q: LinearQuant,
    hw: HardwarePreset,
    max_len: int,
    batch: int = 1,
    rotated: bool = False,
) -> HbmLayout:
    """Allocate every region (see the module doc) for ``batch`` sequences (``rotated``: the
    plan's keys are rotated); CapacityError if HBM is too small."""
    slot = hw.buffers.bytes("weight") // WEIGHT_SLOTS
    geo = BeatGeometry.from_preset(hw)
    period = hw.hbm.channels * hw.hbm.interleave_bytes
    regions: list[Region] = []
    tiles: dict[int, tuple[TileSpec, ...]] = {}
    runs = []
    at = 0
    for run in layer_runs(cfg, quant):
        stride = 0
        for li in run:
            off = _align(param_blob(cfg, rotated).size)
            specs = []
            for op in cfg.linear_ops:
                out, k = cfg.linear_shape(op)
                q = quant[(li, op)]
                bias = has_bias(cfg, op)
                probe = TileSpec(op, out, k, q, bias, True, 1, 0, geo)
                n_eff = effective_nm(hw, q.n, q.m)[0]
                chain_rows = hw.mv.chains * max(1, hw.mv.chain_length // n_eff)
                rows = _tile_rows(probe, slot, chain_rows, f"L{li}.{op}")
                ts = TileSpec(op, out, k, q, bias, True, rows, off, geo)
                specs.append(ts)
                off += ts.nbytes
            tiles[li] = tuple(specs)
            size = _round(off, period)  # identical layers: identical channel patterns
            stride = size
            regions.append(Region(f"L{li}", at, size, "weights"))
            at += size
        runs.append((run.start, len(run), stride))
    hb = has_bias(cfg, "head")
    probe = TileSpec("head", cfg.vocab, cfg.hidden, head_q, hb, True, 1, 0, geo)
    rows = _tile_rows(probe, slot, hw.mv.chains, "head")
    fblob = final_blob(cfg).size
    head = TileSpec("head", cfg.vocab, cfg.hidden, head_q, hb, True, rows, fblob, geo)
    fsize = _align(fblob + head.nbytes)
    regions.append(Region("final", at, fsize, "weights"))
    at += fsize
    at = _round(at, period)
    rope_row = 2 * cfg.head_dim if cfg.positions == "rope" else 0
    if rope_row:
        size = _round(max_len * rope_row, period)
        regions.append(Region("rope", at, size, "table"))
        at += size
    kv_head = _kv_head_stride(max_len * key_row_bytes(cfg, rotated), hw)
    v_head = _kv_head_stride(max_len * cfg.head_dim, hw)
    # V heads start half the channels away from their K heads (both are loaded back to back)
    g = hw.hbm.interleave_bytes
    kv_v = cfg.kv_heads * kv_head
    kv_v += ((hw.hbm.channels // 2) * g - kv_v) % period
    kv_layer = _round(kv_v + cfg.kv_heads * v_head, period)
    kv_seq = kv_layer * cfg.layers
    size = kv_seq * batch
    regions.append(Region("kv", at, size, "kv"))
    at += size
    res = RESIDUAL_BITS // 8
    io = (("input", max(max_len, batch) * res * cfg.hidden), ("logits", batch * 4 * cfg.vocab))
    for name, size in io:
        regions.append(Region(name, at, _align(size), "io"))
        at += _align(size)
    cap = hw.hbm.capacity_bytes
    if at > cap:
        weights = sum(r.size for r in regions if r.kind == "weights")
        kv = sum(r.size for r in regions if r.kind == "kv")
        what = f"{batch} sequences' KV caches" if batch > 1 else "KV cache"
        fit = (cap - (at - kv)) // kv_seq if batch > 1 else 0
        more = f"; at max_len {max_len} {max(fit, 0)} sequences fit" if batch > 1 else ""
        raise CapacityError(
            f"the model needs {_size(at)} of HBM ({_size(weights)} weights, {_size(kv)} "
            f"{what} at max_len {max_len}) but preset {hw.name} has {_size(cap)} "
            f"(hbm.capacity_gib){more}"
        )
    return HbmLayout(
        tuple(regions),
        tuple(runs),
        MappingProxyType(tiles),
        head,
        kv_layer,
        kv_head,
        rope_row,
        at,
        kv_v,
        batch,
        kv_seq,
        rotated,
        v_head,
    )


def slot_factors(kv_seq_bytes: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b = kv_seq_bytes``, ``b`` its largest power-of-two divisor up to
    1 MiB: a program computes a sequence's KV base as ``SEQ * a * b`` with two MULIs, whose
    immediates are 24 bits (a too large ``a`` is refused by :func:`hwflow.isa.make`)."""
    b = min(kv_seq_bytes & -kv_seq_bytes, 1 << 20) if kv_seq_bytes > 0 else 1
    return kv_seq_bytes // b, b


def _tile_bytes(ts: TileSpec, ql: Any, r0: int, r: int, rotated: bool = False) -> np.ndarray:
    if (ql.bias is not None) != ts.bias:
        raise ConfigError(f"{ql.name}: the layout assumed bias={ts.bias}, the model disagrees")
    bits = linear_out_bits(ts.name, rotated)
    if ql.out_bits != bits:
        raise ConfigError(
            f"{ql.name}: the program writes {bits}-bit outputs, the model {ql.out_bits}-bit"
        )
    gmult = None
    if ts.grow:
        if ql.gmult is None or ql.quant.group != ts.quant.group:
            raise ConfigError(
                f"{ql.name}: the layout assumed weight group {ts.quant.group}, the model has "
                f"{ql.quant.group}"
            )
        gmult = ql.gmult[r0 : r0 + r]
    q, sl = ts.quant, slice(r0, r0 + r)
    return encode_tile(
        ql.values[sl],
        None if q.dense else ql.indices[sl],
        ql.bias[sl] if ts.bias else None,
        ql.mult[sl],
        ql.shift[sl],
        q.n,
        q.m,
        q.bits,
        ts.geo,
        gmult,
    )


def _i32(*vals: Any) -> np.ndarray:
    return np.asarray(np.concatenate([np.ravel(v) for v in vals]), "<i4").view(np.uint8)


def _norm_record(p: Mapping[str, Any]) -> np.ndarray:
    """A norm's record: int32 pre-shift, INT16 gains."""
    return np.concatenate([_i32(p["pre"]), np.asarray(p["gamma"], "<i2").view(np.uint8)])


def _layer_params(qm: QuantizedModel, li: int, rotated: bool = False) -> dict[str, np.ndarray]:
    """The bytes of every record of layer ``li``'s parameter blob, by record name."""
    cfg, p = qm.cfg, f"L{li}."
    out = {n: _norm_record(qm.params[p + n]) for n in ("norm1", "norm2")}
    for op in cfg.linear_ops:
        out[f"{op}.guard"] = _i32(qm.linears[p + op].guard)
    sc, pv = qm.params[p + "scores"], qm.params[p + "pv"]
    cols = [sc["mult"], sc["shift"]]
    if rotated:  # the keys' row stage guard; ropeq's per-head multipliers
        cols.append(np.full(cfg.heads, sc["guard"]))
        rq = qm.params[p + "rope_q"]
        out["rope_q"] = _i32(np.stack([rq["mult"], rq["shift"]], axis=1))
    out["scores"] = _i32(np.stack(cols, axis=1))
    guard = np.full(cfg.heads, pv["guard"])
    out["pv"] = _i32(np.stack([pv["mult"], pv["shift"], guard], axis=1))
    act = qm.params[p + "act"]
    out["act"] = _i32(act.get("mult", 0), act.get("shift", 0))
    return out


def build_hbm_image(layout: HbmLayout, qm: QuantizedModel) -> np.ndarray:
    """The HBM contents (uint8) for ``qm``: weights, parameters, RoPE table; KV/io zeroed."""
    cfg = qm.cfg
    img = np.zeros(layout.total, np.uint8)

    def put(at: int, data: np.ndarray) -> None:
        img[at : at + data.size] = data

    rot = layout.rotated
    if rot != (qm.plan.method.keys == "rotated"):
        raise ConfigError(
            f"the layout's keys are {'rotated' if rot else 'static'}, plan {qm.plan.name}'s "
            f"{qm.plan.method.keys!r}"
        )
    pb = param_blob(cfg, rot)
    for li, specs in layout.tiles.items():
        base = layout.region(f"L{li}").base
        for key, data in _layer_params(qm, li, rot).items():
            put(base + pb[key], data)
        for ts in specs:
            ql = qm.linears[f"L{li}.{ts.name}"]
            for r0, r, off in ts.tiles:
                put(base + off, _tile_bytes(ts, ql, r0, r, rot))
    fbase = layout.region("final").base
    fb = final_blob(cfg)
    put(fbase + fb["norm"], _norm_record(qm.params["final.norm"]))
    put(fbase + fb["head.guard"], _i32(qm.linears["head"].guard))
    for r0, r, off in layout.head.tiles:
        put(fbase + off, _tile_bytes(layout.head, qm.linears["head"], r0, r))
    if layout.rope_row:
        rb = layout.region("rope")
        n = rb.size // layout.rope_row
        n = min(n, qm.rope_cos.shape[0])
        rows = np.concatenate(
            [qm.rope_cos[:n].astype("<i2"), qm.rope_sin[:n].astype("<i2")], axis=1
        )
        put(rb.base, rows.view(np.uint8).ravel())
    return img


def _program_offsets(templates: Sequence[Template]) -> list[int]:
    """Byte offset of each template's words in the program region (ALIGN-aligned)."""
    out, at = [], 0
    for t in templates:
        out.append(at)
        at += _align(t.nbytes)
    return [*out, at]


def place_program(at: int, templates: Sequence[Template], hw: HardwarePreset) -> Region:
    """The ``program`` region at byte ``at`` (rounded up to ALIGN) holding ``templates``;
    CapacityError if it does not fit the preset's HBM."""
    base = _align(at)
    size = _program_offsets(templates)[-1]
    if base + size > hw.hbm.capacity_bytes:
        raise CapacityError(
            f"the program ({_size(size)}) does not fit after {_size(base)} of HBM data in "
            f"preset {hw.name}'s {_size(hw.hbm.capacity_bytes)} (hbm.capacity_gib)"
        )
    return Region("program", base, size, "program")


def program_image(templates: Sequence[Template]) -> tuple[np.ndarray, list[int]]:
    """The ``program`` region's bytes and each template's byte offset in it."""
    offs = _program_offsets(templates)
    img = np.zeros(offs[-1], np.uint8)
    for t, off in zip(templates, offs, strict=False):
        img[off : off + t.nbytes] = np.asarray(t.words, "<u4").view(np.uint8)
    return img, offs[:-1]
