"""The hwflow instruction set, defined once: opcodes, field layouts, encoding, disassembly,
the program file format and the one expansion of templates into concrete instruction streams.

Machine model
-------------
Five decoupled execution units, each with its own in-order instruction queue:

====  =====================================================================
LD    HBM -> on-chip buffer (weights, KV cache, parameters, inputs)
ST    on-chip buffer -> HBM (new KV rows, logits)
MM    matrix-matrix DSP-chain engine (prefill linears and attention)
MV    matrix-vector DSP-chain engine (decode linears and attention)
SFU   special functions: norm, softmax, RoPE, LUT, element-wise add/mul, move
====  =====================================================================

plus **SYS**, the in-order dispatcher that reads the single program stream, executes SYS
instructions itself (scalar registers, loops, end) and forwards every other instruction to its
unit's queue. SYS instructions therefore carry no dependency tokens (their mask fields are 0).

Dependency tokens (FlightLLM / VTA style). Every unit instruction carries a 5-bit ``wait`` and a
5-bit ``release`` mask over the units LD, ST, MM, MV, SFU (bit = :class:`Unit` value). There is
one token queue per ordered unit pair (src -> dst). Before it starts, an instruction of unit V
pops one token from queue (U -> V) for every bit U of ``wait`` (blocking until one is there);
after it completes it pushes one token to (V -> U) for every bit U of ``release``. ``SYNC`` is a
unit no-op that only carries masks (used for barriers).

Encoding. An instruction is ``words(op)`` little-endian 32-bit words holding one bit stream,
LSB first: the fields of its opcode's layout (:data:`OPCODES`), in table order, each at the
width given there. Every layout starts with ``opcode`` (6 bits), ``wait`` (5), ``release`` (5).
Unused trailing bits are zero. The same table drives :func:`encode`, :func:`decode` and
:func:`disasm`; there is no other copy of any field list.

Registers and length adaptivity. SYS owns 16 scalar registers R0..R15 (64-bit signed). R0 is
always 0; ``R1 = LEN`` (token rows of this step) and ``R2 = POS`` (cached positions before it)
are set from the :class:`Runtime` before the program starts; the program computes the others with
``SETI/ADDI/ADD/SUB/MULI/MINI``.

Batches (ISA v4). SYS also holds a *context table* CTX, one POS per sequence (KV-cache slot),
written by the host like LEN and POS (:attr:`Runtime.positions`). ``R15 = SEQ`` selects the
sequence: R2 always reads ``CTX[SEQ]`` (0 for a slot the runtime does not name: an idle one),
so a write to R15 also reloads R2. SEQ starts at :attr:`Runtime.seq` (a prefill's slot; 0 for a
batched decode, whose template walks SEQ over its rows: row i is slot i). A single-sequence
runtime reads its POS for every SEQ, so a program run with one sequence sees R2 = POS all along,
as before v4, whatever it writes to R15. A field may be *register-modified* (column ``dyn`` of the layout):

* ``add``: the value used is ``field + R[reg]`` (an address or offset that moves with POS, a
  layer's base address, ...). ``reg = 0`` adds R0 = 0.
* ``clamp``: the value used is ``clamp(R[reg], 0, field)`` (a token or key extent bounded by
  the template's static tile size); ``reg = 0`` means "static: use the field as it is".

Loops. ``LOOP count`` ... ``ENDLOOP`` repeat their body ``count`` times (nesting allowed);
registers keep their values across iterations, so a body advances its base registers with
``ADDI`` (layers of one run differ only by region base addresses). :func:`expand` is the one
place that resolves loops and registers: both the functional simulator and the cycle model call
it, and get :class:`Concrete` instructions whose register-modified fields hold final values and
whose ``loops`` tuple tells which iteration of which loop produced them (for reuse of identical
iterations by a cycle model).

Operation semantics (executed by :mod:`hwflow.funcsim` with :mod:`hwflow.numerics`; operands
are row-strided: row i of operand p starts at ``p_off + i * p_stride`` in buffer ``p_buf``).
Element formats follow the numerics contract (:mod:`hwflow.numerics`): the residual stream is
INT32, linear inputs are INT8 with a per-row *row factor*. A row factor ``(m, e)`` is stored in
the :data:`ROW_FACTOR_BYTES` bytes *before* its row's data: ``m`` as a little-endian uint16 (a
15-bit mantissa), then ``e`` as an int16; an operand's offset points at the data, so the factor
of row i is at ``p_off + i * p_stride - 4``. Multi-byte elements are little-endian.

* LD / ST: ``rows`` rows of ``row_bytes`` between HBM (``hbm``, ``hbm_stride``) and a buffer.
* MM / MV ``linear`` and ``head``: ``o[rows, cols] = numerics.linear_out(a[rows, k] @ W^T,
  mult, shift, obits, row, guard, bias)``: A INT8 (``arow`` 1: with row factors, else the unit
  factor), W the weight tile at ``b`` (format in :mod:`hwflow.compiler.layout`: packed values,
  N:M indices, INT32 bias, per-row mult/shift, with ``wgroup`` g > 0 the per-row group
  multipliers of groups of ``2**g`` inputs, ``numerics.weight_matmul``), the guard an int32 at ``p_off`` in the param
  buffer, the output ``obits`` (8, 16 or 32) wide. ``qk``: ``o = requantize(a[rows, k] @
  b[cols, k]^T, mult, shift, obits)`` (INT8 x INT8 -> INT32 scores), mult/shift int32 at
  ``p_off``; with ``brow`` 1 (rotated keys) each key row j of B carries a row factor and
  ``o = linear_out(acc^T, mult, shift, obits, (m, e), guard)^T`` (the keys' factors in the row
  stage, :func:`hwflow.reference._rotated_scores`), mult, shift, guard int32 at ``p_off``; ``pv``: ``o = linear_out(a[rows, k] @ b[k, cols], mult, shift, obits, row,
  guard)`` with A the UINT8 probabilities and their row factors (``arow`` 1), mult, shift,
  guard int32 at ``p_off``.
* SFU (operand formats per function in :data:`SFU_FORMATS`): ``norm`` (``aux`` 1 = LayerNorm;
  pre-shift int32 then the INT16 gains at ``p_off``), ``softmax`` (``mask`` causal /
  block-sparse by absolute position ``qpos + row``; the EXP2 table is a ROM of the SFU; writes
  the UINT8 numerators with the reciprocal of their row sum as the row factor), ``rope``
  (cos/sin rows at ``b``, head_dim ``aux``), ``silu`` (INT16 -> INT16, mult/shift of the
  table index at ``p_off``; the sigmoid table is a ROM), ``reluq`` (ReLU of INT16, quantized
  per row), ``add`` (INT32 residual add, second operand ``b``), ``mul`` (INT16 x INT16 gated
  product, quantized per row), ``mov`` (bytes); for tensor-parallel boards (numerics contract,
  tensor-parallel reduction) ``requant`` (a linear's two-stage requantization of INT32 ``a``:
  guard, then per column mult, shift and bias int32 at ``p_off``; the row factors of ``b``
  when ``aux`` 1), ``rowmax`` (INT32 per row: max|a * b|, ``aux`` 1: max relu(a)) and
  ``qrows`` (``a * b`` or relu(a) quantized per row by the INT32 maxima at ``p_off``);
  for rotated keys, per row and head of ``aux`` elements of INT16 ``a`` (cos/sin rows at
  ``b`` as ``rope``), ``y = hadamard_int(rope_int(a, cos, sin, 16))``, then ``ropeq``
  (``requantize(y, mult_h, shift_h, 8)``, head h's mult, shift int32 at ``p_off + 8 h``) or
  ``ropek`` (``quant_rows(y)`` per row and head: INT8 codes with each head segment's row
  factor in the 4 bytes before it, segments ``aux + 4`` bytes apart).
* Links (multi-board programs, ISA v4): ``SEND`` (ST unit) copies ``rows`` x ``row_bytes``
  from a buffer to the link towards board ``peer``; ``RECV`` (LD unit) waits for them from
  board ``peer`` and writes them; ``ALLRED`` (ST unit) is a collective of the ``peer`` boards of
  the ring, each holding INT32 rows at the same place, which all end with their sum (``red``
  0) or maximum (``red`` 1). The single-board RTL machine refuses them.

For the cycle model. ``expand(template, runtime)`` yields :class:`Concrete` instructions in
dispatch order; filter by ``unit`` for the per-unit queues. Every field a cost needs is in
``Concrete.fields`` with final values: LD/ST ``rows`` x ``row_bytes`` at ``hbm`` (stride
``hbm_stride``; channel by :func:`hbm_channel`), ``kind`` (:data:`XFER_KINDS`); MM/MV ``func``
(:data:`MATMUL_FUNCS`), ``rows`` (tokens), ``cols`` (output rows / keys), ``k``, ``n``:``m``,
``wbits``; SFU ``func`` (:data:`SFU_FUNCS`), ``rows`` x ``cols``. Extents may be 0 (a tile past
the runtime length): the instruction still syncs. ``Concrete.loops`` identifies loop
iterations; the compiler puts a barrier before every LOOP and ENDLOOP, so iterations of a
layer loop are identical, barrier-delimited token segments. ``expand(..., iteration_key=...)``
yields an iteration once per distinct key and a :class:`Reuse` marker for the others, so a
cycle model replays it instead of expanding it again (same loop and register semantics: the
registers still run through every iteration).

Program file (``.hwp``). Little-endian::

    magic "HWFLOWP\\0" | isa_version u16 | header_len u32 | header JSON (preset digest, model,
    plan, max_len, buckets, ...) | section count u16 | sections: tag 4 bytes, length u32, payload
    | CRC-32 of everything before it (u32)

Sections: ``REGN`` (HBM region table, JSON), one ``TMPL`` per template (a JSON head with phase,
length range and static facts, then the instruction words). :func:`load_program` refuses a
corrupt, truncated, foreign-ISA or other-preset file with :class:`~hwflow.errors.ProgramError`.
"""

from __future__ import annotations

import json
import struct
import zlib
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hwflow.errors import ProgramError

__all__ = [
    "ISA_VERSION",
    "LINK_OPS",
    "MAGIC",
    "MATMUL_FUNCS",
    "NREGS",
    "OPCODES",
    "REG_LEN",
    "REG_POS",
    "REG_SEQ",
    "ROW_FACTOR_BYTES",
    "SFU_FORMATS",
    "SFU_FUNCS",
    "SYS_ALU",
    "TOKEN_UNITS",
    "XFER_KINDS",
    "Buf",
    "Concrete",
    "Field",
    "Instr",
    "MatmulFunc",
    "OpSpec",
    "Program",
    "Region",
    "Reuse",
    "Runtime",
    "SfuFormat",
    "SfuFunc",
    "SoftmaxMask",
    "Template",
    "Unit",
    "XferKind",
    "decode",
    "decode_stream",
    "disasm",
    "dispatch",
    "encode",
    "encode_stream",
    "expand",
    "hbm_channel",
    "load_program",
    "loop_spans",
    "make",
    "mask_str",
]

#: 2: numerics v2 (INT32 residual, row factors, MM obits/arow, SFU silu/reluq);
#: 3: MM/MV ``wgroup`` (group-wise weight scales: the tile's trailing group multipliers);
#: 4: board-to-board links (SEND, RECV, ALLRED) and the SFU ``requant`` of a reduced linear;
#:    the context table CTX read through R15 = SEQ (batched decode; no field changed);
#: 5: rotated keys (plan ``method.keys: rotated``): MM/MV ``brow`` (qk: the keys' row factors,
#:    MM/MV 9 -> 10 words) and the SFU's ``ropeq`` / ``ropek``
ISA_VERSION = 5
MAGIC = b"HWFLOWP\0"
NREGS = 16
REG_LEN = 1  #: R1 = LEN, tokens of this step (runtime)
REG_POS = 2  #: R2 = POS, cached positions before this step (runtime): CTX[SEQ]
REG_SEQ = 15  #: R15 = SEQ, the sequence (KV-cache slot) R2 reads the context of


class Unit(IntEnum):
    """Execution units; the value is the unit's bit in wait/release masks. SYS has no bit."""

    LD = 0
    ST = 1
    MM = 2
    MV = 3
    SFU = 4
    SYS = 5


#: Units that own token queues (SYS is the dispatcher).
TOKEN_UNITS = (Unit.LD, Unit.ST, Unit.MM, Unit.MV, Unit.SFU)


class Buf(IntEnum):
    """On-chip buffers (sizes from the preset's ``buffers`` section)."""

    WEIGHT = 0
    ACT = 1
    KV = 2
    SCORE = 3
    PARAM = 4


class XferKind(IntEnum):
    """What an LD/ST moves (its ``kind`` field)."""

    WEIGHTS = 0
    PARAMS = 1
    KV = 2
    ACT = 3  #: activations (the step's input rows)
    ROPE = 4
    LOGITS = 5


class MatmulFunc(IntEnum):
    """What an MM/MV computes (its ``func`` field; formulas in the module doc)."""

    LINEAR = 0  #: two-stage requantization of A @ W^T
    QK = 1  #: attention scores
    PV = 2  #: probabilities times V
    HEAD = 3  #: logits


class SfuFunc(IntEnum):
    """What an SFU op computes (its ``func`` field; operand formats in :data:`SFU_FORMATS`)."""

    NORM = 0
    SOFTMAX = 1
    ROPE = 2
    SILU = 3
    ADD = 4
    MUL = 5
    MOV = 6
    RELUQ = 7
    REQUANT = 8  #: the two-stage requantization of a linear's (reduced) INT32 accumulators
    ROWMAX = 9  #: per-row maximum of |a * b| (aux 1: of relu(a)) as one INT32 per output row
    QROWS = 10  #: a * b (aux 1: relu(a)) quantized per row by the INT32 maxima at ``p_off``
    ROPEQ = 11  #: rotated keys' q: INT16 RoPE, Hadamard per head, INT8 at per-head mult/shift
    ROPEK = 12  #: rotated keys' k: INT16 RoPE, Hadamard per head, INT8 per (row, head) + factor


class SoftmaxMask(IntEnum):
    """The softmax's ``mask`` field: which keys a row sees."""

    NONE = 0
    CAUSAL = 1
    BLOCK = 2  #: block-sparse causal (``blk``, ``local``, ``glob``)


def _names(codes: type[IntEnum]) -> tuple[str, ...]:
    """Lower-case member names indexed by code (the codes are 0, 1, ...; tests/test_isa.py)."""
    return tuple(c.name.lower() for c in codes)


def _code_doc(codes: type[IntEnum]) -> str:
    """``0 weights, 1 params, ...``: the field doc of a code."""
    return ", ".join(f"{c.value} {c.name.lower()}" for c in codes)


@dataclass(frozen=True)
class Field:
    """One field of an instruction layout: ``bits`` wide; ``dyn`` = (mode, register field)
    when the value is register-modified (mode ``add`` or ``clamp``, see module doc)."""

    name: str
    bits: int
    doc: str = ""
    signed: bool = False
    dyn: tuple[str, str] | None = None


@dataclass(frozen=True)
class OpSpec:
    """An opcode: its number, unit, field layout and (derived) word count."""

    name: str
    code: int
    unit: Unit
    fields: tuple[Field, ...]
    doc: str = ""

    @cached_property
    def bits(self) -> int:
        return sum(f.bits for f in self.fields)

    @cached_property
    def words(self) -> int:
        return -(-self.bits // 32)

    @cached_property
    def index(self) -> Mapping[str, Field]:
        return MappingProxyType({f.name: f for f in self.fields})

    @cached_property
    def resolution(self) -> tuple[tuple[str, ...], tuple[tuple[str, bool, str], ...]]:
        """For :attr:`Template.resolvers`: the static field names (no header, no register
        fields) and the register-modified ones as (name, is_add, register field)."""
        regs = {f.dyn[1] for f in self.fields if f.dyn}
        static = tuple(f.name for f in self.fields[3:] if f.dyn is None and f.name not in regs)
        dyn = tuple((f.name, f.dyn[0] == "add", f.dyn[1]) for f in self.fields[3:] if f.dyn)
        return static, dyn


def _hdr() -> tuple[Field, ...]:
    return (
        Field("opcode", 6, "operation code"),
        Field("wait", 5, "units to pop one token from before starting"),
        Field("release", 5, "units to push one token to after completing"),
    )


def _operand(p: str, what: str, stride_bits: int = 24) -> tuple[Field, ...]:
    """An on-chip operand: buffer id, byte offset (+ R[reg]), row stride in bytes."""
    return (
        Field(f"{p}_buf", 3, f"{what}: buffer id (Buf)"),
        Field(f"{p}_off", 24, f"{what}: byte offset (+ R[{p}_reg])", dyn=("add", f"{p}_reg")),
        Field(f"{p}_reg", 4, f"{what}: register added to the offset"),
        Field(f"{p}_stride", stride_bits, f"{what}: bytes between rows"),
    )


_XFER = (
    *_hdr(),
    Field("kind", 3, f"what moves (XferKind): {_code_doc(XferKind)}"),
    Field("hbm", 40, "HBM byte address (+ R[hbm_reg])", dyn=("add", "hbm_reg")),
    Field("hbm_reg", 4, "register added to the HBM address"),
    Field("hbm_stride", 24, "bytes between rows in HBM"),
    Field("buf", 3, "on-chip buffer id (Buf)"),
    Field("off", 24, "on-chip byte offset (+ R[off_reg])", dyn=("add", "off_reg")),
    Field("off_reg", 4, "register added to the on-chip offset"),
    Field("stride", 24, "on-chip bytes between rows"),
    Field("row_bytes", 24, "bytes per row"),
    Field("rows", 16, "rows (max when rows_reg != 0)", dyn=("clamp", "rows_reg")),
    Field("rows_reg", 4, "register clamping rows to 0..rows"),
)

#: Transfer kind names (``kind`` of LD/ST), indexed by code.
XFER_KINDS = _names(XferKind)

_MATMUL = (
    *_hdr(),
    Field("func", 2, f"MatmulFunc: {_code_doc(MatmulFunc)}"),
    Field("rows", 16, "token rows (max when rows_reg != 0)", dyn=("clamp", "rows_reg")),
    Field("rows_reg", 4, "register clamping rows"),
    Field("cols", 16, "output columns (max when cols_reg != 0)", dyn=("clamp", "cols_reg")),
    Field("cols_reg", 4, "register clamping cols (qk: keys)"),
    Field("k", 16, "reduction length (max when k_reg != 0)", dyn=("clamp", "k_reg")),
    Field("k_reg", 4, "register clamping k (pv: keys)"),
    Field("n", 5, "kept weights per group of m (n = m: dense)"),
    Field("m", 5, "sparsity group (log2 index width)"),
    Field("wbits", 4, "weight / B-operand bits (2, 3, 4, 8)"),
    Field("bias", 1, "linear/head: the weight tile carries an INT32 bias per row"),
    *_operand("a", "activations A[rows, k]"),
    *_operand("b", "weights / K / V"),
    *_operand("o", "output"),
    Field(
        "p_off", 20, "param buffer offset: linear/head guard; qk mult, shift; pv mult, shift, guard"
    ),
    Field("obits", 6, "output element bits: 8, 16 or 32"),
    Field("arow", 1, "A rows carry a row factor in the 4 bytes before each row"),
    Field("wgroup", 3, "linear/head: log2 of the weight group (G <= 128); 0: no group"),
    Field("brow", 1, "qk: B (key) rows carry a row factor in the 4 bytes before each row"),
)

#: Matrix function names, indexed by code.
MATMUL_FUNCS = _names(MatmulFunc)

_SFU = (
    *_hdr(),
    Field("func", 4, f"SfuFunc: {_code_doc(SfuFunc)}"),
    Field("rows", 16, "rows (max when rows_reg != 0)", dyn=("clamp", "rows_reg")),
    Field("rows_reg", 4, "register clamping rows"),
    Field("cols", 16, "elements per row (max when cols_reg != 0)", dyn=("clamp", "cols_reg")),
    Field("cols_reg", 4, "register clamping cols (softmax: keys)"),
    *_operand("a", "input A"),
    *_operand("b", "input B (add/mul operand, rope table)"),
    *_operand("o", "output"),
    Field("p_off", 20, "param buffer offset (norm pre-shift and gains, silu mult/shift)"),
    Field("aux", 16, "rope: head_dim; norm: 1 = centre (LayerNorm)"),
    Field("mask", 2, f"softmax mask (SoftmaxMask): {_code_doc(SoftmaxMask)}"),
    Field(
        "qpos",
        16,
        "softmax: absolute position of the first row (+ R[qpos_reg])",
        dyn=("add", "qpos_reg"),
    ),
    Field("qpos_reg", 4, "register added to qpos"),
    Field("blk", 12, "softmax block mask: block size"),
    Field("local", 6, "softmax block mask: local blocks (own included)"),
    Field("glob", 6, "softmax block mask: leading global blocks"),
)

#: SFU function names, indexed by code.
SFU_FUNCS = _names(SfuFunc)

#: Bytes of a row factor (uint16 mantissa, int16 exponent) stored before its row's data.
ROW_FACTOR_BYTES = 4


@dataclass(frozen=True)
class SfuFormat:
    """Operand formats of one SFU function: bytes per element of A, of B (0: no B operand or
    a table), of the output, whether each output row carries a row factor, and whether each
    head segment of a row does instead (``head_factor``: segments of ``aux`` elements
    ``aux + ROW_FACTOR_BYTES`` bytes apart, each factor in the bytes before its segment)."""

    a: int
    b: int
    o: int
    row_factor: bool
    head_factor: bool = False


#: The operand formats of every SFU function (numerics contract; rope's B is its int16 cos/sin
#: rows, ``2 * aux`` elements per row).
SFU_FORMATS: Mapping[str, SfuFormat] = MappingProxyType(
    {
        "norm": SfuFormat(4, 0, 1, True),
        "softmax": SfuFormat(4, 0, 1, True),
        "rope": SfuFormat(1, 2, 1, False),
        "silu": SfuFormat(2, 0, 2, False),
        "add": SfuFormat(4, 4, 4, False),
        "mul": SfuFormat(2, 2, 1, True),
        "mov": SfuFormat(1, 0, 1, False),
        "reluq": SfuFormat(2, 0, 1, True),
        "requant": SfuFormat(4, 0, 4, False),
        "rowmax": SfuFormat(2, 2, 4, False),
        "qrows": SfuFormat(2, 2, 1, True),
        "ropeq": SfuFormat(2, 2, 1, False),
        "ropek": SfuFormat(2, 2, 1, False, head_factor=True),
    }
)

#: A board-to-board transfer (SEND / RECV) or collective (ALLRED): ``rows`` rows of
#: ``row_bytes`` at (``buf``, ``off``, ``stride``). SEND/RECV: ``peer`` is the other board;
#: ALLRED: ``peer`` is the ring size, every board of the ring issues it on the same rows (of
#: INT32 elements) and each ends holding their sum (``red`` 0,
#: :func:`hwflow.numerics.reduce_partials`) or maximum (``red`` 1, ``reduce_max``).
_LINK = (
    *_hdr(),
    Field("buf", 3, "on-chip buffer id (Buf)"),
    Field("off", 24, "on-chip byte offset (+ R[off_reg])", dyn=("add", "off_reg")),
    Field("off_reg", 4, "register added to the on-chip offset"),
    Field("stride", 24, "on-chip bytes between rows"),
    Field("row_bytes", 24, "bytes per row"),
    Field("rows", 16, "rows (max when rows_reg != 0)", dyn=("clamp", "rows_reg")),
    Field("rows_reg", 4, "register clamping rows to 0..rows"),
    Field("peer", 6, "SEND/RECV: the other board; ALLRED: boards in the ring"),
    Field("red", 1, "ALLRED: 0 sum (INT32 partials), 1 maximum (INT32 row maxima)"),
)
#: Link opcodes (multi-board programs; the single-board RTL machine has no link ports).
LINK_OPS = frozenset({"SEND", "RECV", "ALLRED"})

_REG = Field("rd", 4, "destination register")
OPCODES: tuple[OpSpec, ...] = (
    OpSpec("LD", 1, Unit.LD, _XFER, "copy rows HBM -> buffer"),
    OpSpec("ST", 2, Unit.ST, _XFER, "copy rows buffer -> HBM"),
    OpSpec("MM", 3, Unit.MM, _MATMUL, "matrix-matrix engine op (prefill)"),
    OpSpec("MV", 4, Unit.MV, _MATMUL, "matrix-vector engine op (decode)"),
    OpSpec("SFU", 5, Unit.SFU, _SFU, "special-function op"),
    *(
        OpSpec(f"SYNC.{u.name}", 8 + u, u, _hdr(), f"{u.name} no-op carrying tokens")
        for u in TOKEN_UNITS
    ),
    OpSpec("LOOP", 16, Unit.SYS, (*_hdr(), Field("count", 16, "iterations")), "begin loop"),
    OpSpec("ENDLOOP", 17, Unit.SYS, _hdr(), "end of the innermost loop body"),
    OpSpec(
        "SETI",
        18,
        Unit.SYS,
        (*_hdr(), _REG, Field("imm", 44, "value", signed=True)),
        "R[rd] = imm",
    ),
    OpSpec(
        "ADDI",
        19,
        Unit.SYS,
        (*_hdr(), _REG, Field("ra", 4, "source"), Field("imm", 40, "addend", signed=True)),
        "R[rd] = R[ra] + imm",
    ),
    OpSpec(
        "SUB",
        20,
        Unit.SYS,
        (*_hdr(), _REG, Field("ra", 4, "minuend"), Field("rb", 4, "subtrahend")),
        "R[rd] = R[ra] - R[rb]",
    ),
    OpSpec(
        "MULI",
        21,
        Unit.SYS,
        (*_hdr(), _REG, Field("ra", 4, "source"), Field("imm", 24, "factor", signed=True)),
        "R[rd] = R[ra] * imm",
    ),
    OpSpec(
        "ADD",
        22,
        Unit.SYS,
        (*_hdr(), _REG, Field("ra", 4, "addend"), Field("rb", 4, "addend")),
        "R[rd] = R[ra] + R[rb]",
    ),
    OpSpec(
        "MINI",
        23,
        Unit.SYS,
        (*_hdr(), _REG, Field("ra", 4, "source"), Field("imm", 24, "bound", signed=True)),
        "R[rd] = min(R[ra], imm)",
    ),
    OpSpec("END", 31, Unit.SYS, _hdr(), "end of program"),
    # multi-board systems (ISA v4): the DMA units drive the board-to-board link ports
    OpSpec("SEND", 24, Unit.ST, _LINK, "copy rows buffer -> the link to board ``peer``"),
    OpSpec("RECV", 25, Unit.LD, _LINK, "copy rows from the link of board ``peer`` -> buffer"),
    OpSpec("ALLRED", 26, Unit.ST, _LINK, "sum INT32 rows over the ``peer`` boards of the ring"),
)

_BY_NAME: Mapping[str, OpSpec] = MappingProxyType({s.name: s for s in OPCODES})
_BY_CODE: Mapping[int, OpSpec] = MappingProxyType({s.code: s for s in OPCODES})


def spec(op: str) -> OpSpec:
    """The :class:`OpSpec` of an opcode name."""
    try:
        return _BY_NAME[op]
    except KeyError:
        raise ProgramError(f"unknown opcode {op!r} (known: {sorted(_BY_NAME)})") from None


# --------------------------------------------------------------------------------------------
# Instructions


@dataclass(frozen=True)
class Instr:
    """One template instruction: opcode name and every field of its layout (read-only)."""

    op: str
    fields: Mapping[str, int]

    def __getitem__(self, name: str) -> int:
        return self.fields[name]

    @property
    def spec(self) -> OpSpec:
        return _BY_NAME[self.op]

    @property
    def unit(self) -> Unit:
        return self.spec.unit

    @property
    def wait(self) -> int:
        return self.fields["wait"]

    @property
    def release(self) -> int:
        return self.fields["release"]

    def with_masks(self, wait: int, release: int) -> Instr:
        return make(self.op, **{**self.fields, "wait": wait, "release": release})


def make(op: str, **values: int) -> Instr:
    """Build an instruction; missing fields are 0; values are range-checked against the layout."""
    s = spec(op)
    values.pop("opcode", None)
    unknown = set(values) - set(s.index)
    if unknown:
        raise ProgramError(f"{op}: unknown fields {sorted(unknown)}")
    out: dict[str, int] = {"opcode": s.code}
    for f in s.fields[1:]:
        v = int(values.get(f.name, 0))
        lo, hi = (
            (-(1 << (f.bits - 1)), (1 << (f.bits - 1)) - 1) if f.signed else (0, (1 << f.bits) - 1)
        )
        if not lo <= v <= hi:
            raise ProgramError(f"{op}.{f.name} = {v} does not fit {f.bits} bits ({lo}..{hi})")
        out[f.name] = v
    if s.unit == Unit.SYS and (out["wait"] or out["release"]):
        raise ProgramError(f"{op}: SYS instructions carry no tokens")
    return Instr(op, MappingProxyType(out))


def encode(ins: Instr) -> list[int]:
    """The instruction's 32-bit words (one LSB-first bit stream over its layout)."""
    s = ins.spec
    acc, pos = 0, 0
    for f in s.fields:
        acc |= (ins.fields[f.name] & ((1 << f.bits) - 1)) << pos
        pos += f.bits
    return [(acc >> (32 * i)) & 0xFFFFFFFF for i in range(s.words)]


def decode(words: Sequence[int], at: int = 0) -> tuple[Instr, int]:
    """Decode the instruction starting at ``words[at]``; returns it and the next index."""
    if at >= len(words):
        raise ProgramError(f"instruction stream truncated at word {at}")
    code = words[at] & 0x3F
    s = _BY_CODE.get(code)
    if s is None:
        raise ProgramError(f"word {at}: unknown opcode {code} (ISA v{ISA_VERSION})")
    if at + s.words > len(words):
        raise ProgramError(f"word {at}: {s.name} needs {s.words} words, stream truncated")
    acc = 0
    for i in range(s.words):
        acc |= int(words[at + i]) << (32 * i)
    vals: dict[str, int] = {}
    pos = 0
    for f in s.fields:
        v = (acc >> pos) & ((1 << f.bits) - 1)
        if f.signed and v >> (f.bits - 1):
            v -= 1 << f.bits
        vals[f.name] = v
        pos += f.bits
    if acc >> pos:
        raise ProgramError(f"word {at}: {s.name} has non-zero padding bits")
    return Instr(s.name, MappingProxyType(vals)), at + s.words


def encode_stream(instrs: Iterable[Instr]) -> list[int]:
    words: list[int] = []
    for ins in instrs:
        words.extend(encode(ins))
    return words


def decode_stream(words: Sequence[int]) -> tuple[Instr, ...]:
    out = []
    at = 0
    while at < len(words):
        ins, at = decode(words, at)
        out.append(ins)
    return tuple(out)


def mask_str(mask: int) -> str:
    """``LD|MV`` for a token mask; ``-`` for none."""
    return "|".join(u.name for u in TOKEN_UNITS if mask >> u & 1) or "-"


def disasm(ins: Instr) -> str:
    """One line of text: opcode, masks, then every non-zero field as ``name=value``."""
    s = ins.spec
    parts = [f"{s.name:<8}"]
    if s.unit != Unit.SYS:
        parts.append(f"w={mask_str(ins.wait):<11} r={mask_str(ins.release):<11}")
    for f in s.fields[3:]:
        v = ins.fields[f.name]
        if v or f.name in ("count", "imm"):
            if f.name == "func":
                names = MATMUL_FUNCS if s.name in ("MM", "MV") else SFU_FUNCS
                parts.append(f"func={names[v] if v < len(names) else v}")
            elif f.name == "kind":
                parts.append(f"kind={XFER_KINDS[v] if v < len(XFER_KINDS) else v}")
            elif f.name.endswith("buf"):
                parts.append(f"{f.name}={Buf(v).name if v < len(Buf) else v}")
            elif f.name in ("hbm",):
                parts.append(f"{f.name}={v:#x}")
            else:
                parts.append(f"{f.name}={v}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Programs


@dataclass(frozen=True)
class Region:
    """A named HBM region: ``[base, base + size)`` bytes; ``kind`` weights/kv/io/table/program."""

    name: str
    base: int
    size: int
    kind: str


@dataclass(frozen=True)
class Template:
    """A program template serving ``phase`` at lengths ``lo..hi`` (prefill: LEN; decode: the
    context POS + 1). ``instrs`` is the program stream (SYS and unit instructions, ending in
    END); ``info`` holds static facts (tile sizes, register roles) as JSON-safe values."""

    phase: str
    lo: int
    hi: int
    instrs: tuple[Instr, ...]
    info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @cached_property
    def words(self) -> tuple[int, ...]:
        return tuple(encode_stream(self.instrs))

    @property
    def nbytes(self) -> int:
        return 4 * len(self.words)

    @cached_property
    def resolvers(
        self,
    ) -> tuple[tuple[dict[str, int], tuple[tuple[str, int, bool, int], ...]] | None, ...]:
        """Per pc, how :func:`expand` resolves a unit instruction: its static fields and its
        register-modified ones as (name, value, is_add, register); None for SYS."""
        return tuple(self.resolver(pc) for pc in range(len(self.instrs)))

    @cached_property
    def _resolved(self) -> list[Any]:
        return [False] * len(self.instrs)

    def resolver(
        self, pc: int
    ) -> tuple[dict[str, int], tuple[tuple[str, int, bool, int], ...]] | None:
        """:attr:`resolvers` of one pc, computed once when first needed."""
        got = self._resolved[pc]
        if got is False:
            ins = self.instrs[pc]
            s = ins.spec
            got = None
            if s.unit != Unit.SYS:
                names, dyns = s.resolution
                f = ins.fields
                got = ({n: f[n] for n in names}, tuple((n, f[n], add, f[r]) for n, add, r in dyns))
            self._resolved[pc] = got
        return got

    @cached_property
    def skips(self) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        """For :func:`expand` skipping unit instructions: per pc the next SYS pc at or after it,
        and per pc the unit instructions of each token unit before it (prefix counts)."""
        n = len(self.instrs)
        nxt = [n] * (n + 1)
        for pc in range(n - 1, -1, -1):
            nxt[pc] = pc if self.instrs[pc].unit == Unit.SYS else nxt[pc + 1]
        pre = [(0,) * len(TOKEN_UNITS)]
        for ins in self.instrs:
            c = list(pre[-1])
            if ins.unit != Unit.SYS:
                c[ins.unit] += 1
            pre.append(tuple(c))
        return tuple(nxt), tuple(pre)

    @cached_property
    def spans(self) -> Mapping[int, int]:
        """:func:`loop_spans` of the instructions (``{LOOP pc: ENDLOOP pc}``)."""
        return MappingProxyType(loop_spans(self.instrs))

    @property
    def batch(self) -> int:
        """Sequences a decode template serves at once (``info["batch"]``; 1 without it)."""
        return int(self.info.get("batch", 1))

    def serves(self, runtime: Runtime) -> bool:
        if self.phase == "prefill":
            return (
                runtime.pos == 0 and not runtime.positions and self.lo <= runtime.length <= self.hi
            )
        rows = runtime.length
        if rows > 1 and len(runtime.positions) != rows:  # a batch names every row's POS
            return False
        return rows <= self.batch and self.lo <= runtime.context <= self.hi


@dataclass(frozen=True)
class Runtime:
    """Run-time registers: ``length`` token rows of this step after ``pos`` cached positions;
    ``seq`` the sequence (KV-cache slot) of the step (R15 at the start); a batched decode's
    ``positions``: the context table CTX, the POS of each row's sequence (row i is slot i;
    :meth:`batch`)."""

    length: int
    pos: int = 0
    seq: int = 0
    positions: tuple[int, ...] = ()

    @classmethod
    def batch(cls, positions: Sequence[int]) -> Runtime:
        """A decode step of ``len(positions)`` sequences, sequence i at POS ``positions[i]``."""
        ps = tuple(int(p) for p in positions)
        return cls(len(ps), ps[0] if ps else 0, 0, ps)

    def ctx(self, slot: int) -> int:
        """CTX[slot]: the POS R2 reads while SEQ = ``slot`` (0 for a slot a batch does not
        name). A single-sequence runtime has one context: every SEQ reads its POS, so a
        program that uses R15 as an ordinary register (the multi-board lowering's reduce
        records) keeps R2 = POS."""
        if self.positions:
            return self.positions[slot] if 0 <= slot < len(self.positions) else 0
        return self.pos

    @property
    def context(self) -> int:
        """The longest context of a decode step (what selects its template): POS + 1 of its
        furthest sequence."""
        return max(self.positions, default=self.pos) + 1


@dataclass(frozen=True)
class Program:
    """A compiled program: the templates of every length bucket plus the HBM region table.

    ``header`` names the preset digest, model, plan, max_len and buckets; a program is refused
    on a machine whose preset digest differs (:meth:`check_preset`)."""

    header: Mapping[str, Any]
    regions: tuple[Region, ...]
    templates: tuple[Template, ...]

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise ProgramError(f"program has no HBM region {name!r}")

    def select(self, phase: str, runtime: Runtime) -> Template:
        """The template serving this step; ProgramError naming the served range otherwise."""
        for t in self.templates:
            if t.phase == phase and t.serves(runtime):
                return t
        ranges = [f"{t.lo}..{t.hi}" for t in self.templates if t.phase == phase]
        batch = max((t.batch for t in self.templates if t.phase == phase), default=1)
        if phase == "decode" and runtime.length > batch:
            raise ProgramError(
                f"no decode template serves a batch of {runtime.length} sequences (the program "
                f"serves 1..{batch}: compile with --batch {runtime.length})"
            )
        what = "LEN" if phase == "prefill" else "context POS+1"
        n = runtime.length if phase == "prefill" else runtime.context
        span = f"{ranges[0].split('..')[0]}..{ranges[-1].split('..')[1]}" if ranges else "none"
        raise ProgramError(f"no {phase} template serves {what} = {n} (served: {span})")

    def check_preset(self, digest: str, name: str = "") -> None:
        have = self.header.get("preset_digest")
        if have != digest:
            raise ProgramError(
                f"program was compiled for preset {self.header.get('preset')!r} "
                f"(digest {str(have)[:12]}), not for {name or 'this preset'} (digest {digest[:12]})"
            )

    @property
    def instr_bytes(self) -> int:
        return sum(t.nbytes for t in self.templates)

    def to_bytes(self) -> bytes:
        head = json.dumps(dict(self.header), sort_keys=True).encode()
        out = bytearray(MAGIC + struct.pack("<HI", ISA_VERSION, len(head)) + head)
        sections: list[tuple[bytes, bytes]] = [
            (b"REGN", json.dumps([r.__dict__ for r in self.regions]).encode())
        ]
        for t in self.templates:
            meta = json.dumps(
                {"phase": t.phase, "lo": t.lo, "hi": t.hi, "info": dict(t.info)}, sort_keys=True
            ).encode()
            words = struct.pack(f"<{len(t.words)}I", *t.words)
            sections.append((b"TMPL", struct.pack("<I", len(meta)) + meta + words))
        out += struct.pack("<H", len(sections))
        for tag, payload in sections:
            out += tag + struct.pack("<I", len(payload)) + payload
        out += struct.pack("<I", zlib.crc32(out))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "program") -> Program:
        if len(data) < len(MAGIC) + 10:
            raise ProgramError(f"{source}: truncated ({len(data)} bytes), not an hwflow program")
        if data[: len(MAGIC)] != MAGIC:
            raise ProgramError(f"{source}: bad magic {data[:8]!r}, not an hwflow program")
        version, hlen = struct.unpack_from("<HI", data, len(MAGIC))
        if version != ISA_VERSION:
            raise ProgramError(
                f"{source}: ISA version {version}, this hwflow reads version {ISA_VERSION}"
            )
        (crc,) = struct.unpack_from("<I", data, len(data) - 4)
        if zlib.crc32(data[:-4]) != crc:
            raise ProgramError(f"{source}: checksum mismatch (corrupt or truncated file)")
        end = len(data) - 4
        try:
            at = len(MAGIC) + 6
            if at + hlen + 2 > end:
                raise ValueError(f"header length {hlen} runs past the end of the file")
            header = json.loads(data[at : at + hlen])
            if not isinstance(header, dict) or set(_HEADER) - set(header):
                raise ValueError(f"header lacks {sorted(set(_HEADER) - set(header or {}))}")
            for key, kind in _HEADER.items():
                if not isinstance(header[key], kind) or isinstance(header[key], bool):
                    raise ValueError(f"header {key} = {header[key]!r} is not {kind.__name__}")
            at += hlen
            (nsec,) = struct.unpack_from("<H", data, at)
            at += 2
            regions: list[Region] = []
            templates: list[Template] = []
            for i in range(nsec):
                if at + 8 > end:
                    raise ValueError(f"the file ends before section {i} of {nsec}")
                tag = data[at : at + 4]
                (ln,) = struct.unpack_from("<I", data, at + 4)
                if at + 8 + ln > end:
                    raise ValueError(f"section {i} ({tag!r}) runs past the end of the file")
                payload = data[at + 8 : at + 8 + ln]
                at += 8 + ln
                if tag == b"REGN":
                    regions = [Region(**r) for r in json.loads(payload)]
                elif tag == b"TMPL":
                    (mlen,) = struct.unpack_from("<I", payload, 0)
                    meta = json.loads(payload[4 : 4 + mlen])
                    raw = payload[4 + mlen :]
                    if len(raw) % 4 or meta["phase"] not in ("prefill", "decode"):
                        raise ValueError(f"template {len(templates)} is malformed")
                    words = struct.unpack(f"<{len(raw) // 4}I", raw)
                    templates.append(
                        Template(
                            meta["phase"],
                            meta["lo"],
                            meta["hi"],
                            decode_stream(words),
                            MappingProxyType(meta["info"]),
                        )
                    )
                else:
                    raise ProgramError(f"{source}: unknown section {tag!r}")
            if at != end:
                raise ValueError(f"{end - at} stray bytes after the last section")
        except ProgramError as e:
            msg = str(e)
            raise ProgramError(msg if msg.startswith(source) else f"{source}: {e}") from None
        except (struct.error, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ProgramError(f"{source}: malformed program ({e})") from None
        return cls(MappingProxyType(header), tuple(regions), tuple(templates))


#: Header keys every program file carries (what :func:`load_program` and the tools read).
_HEADER = MappingProxyType(
    {"isa_version": int, "preset": str, "preset_digest": str, "model": str, "plan": str,
     "max_len": int}
)  # fmt: skip


def load_program(path: str | Path, preset: Any | None = None) -> Program:
    """Read a ``.hwp`` file; with ``preset`` (a HardwarePreset) refuse one built for another."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ProgramError(f"{p}: cannot read ({e.strerror})") from None
    prog = Program.from_bytes(data, str(p))
    if preset is not None:
        try:
            prog.check_preset(preset.digest, preset.name)
        except ProgramError as e:
            raise ProgramError(f"{p}: {e}") from None
    return prog


# --------------------------------------------------------------------------------------------
# Expansion (the one definition of loop and register semantics)


@dataclass(frozen=True)
class Concrete:
    """A unit instruction as executed: ``pc`` in its template, register-modified fields resolved
    in ``fields`` (register fields themselves dropped), ``seq`` its position in its unit's
    stream, ``loops`` the (loop pc, iteration) of every enclosing loop, outermost first."""

    pc: int
    op: str
    unit: Unit
    wait: int
    release: int
    fields: Mapping[str, int]
    seq: int
    loops: tuple[tuple[int, int], ...]

    def __getitem__(self, name: str) -> int:
        return self.fields[name]


def loop_spans(instrs: Sequence[Instr]) -> dict[int, int]:
    """``{LOOP pc: matching ENDLOOP pc}``; ProgramError on unbalanced loops."""
    stack: list[int] = []
    spans: dict[int, int] = {}
    for pc, ins in enumerate(instrs):
        if ins.op == "LOOP":
            stack.append(pc)
        elif ins.op == "ENDLOOP":
            if not stack:
                raise ProgramError(f"pc {pc}: ENDLOOP without LOOP")
            spans[stack.pop()] = pc
    if stack:
        raise ProgramError(f"pc {stack[-1]}: LOOP without ENDLOOP")
    return spans


SYS_ALU = _ALU = frozenset({"SETI", "ADDI", "ADD", "SUB", "MULI", "MINI"})


@dataclass(frozen=True, slots=True)
class Reuse:
    """A marker of :func:`expand` with an ``iteration_key``: ``begin`` and ``end`` bracket the
    first loop iteration with a given key (``ident`` numbers the distinct (loop, key) pairs),
    ``repeat`` stands for a later iteration with the same key, whose unit instructions are not
    yielded (registers and ``seq`` still advance exactly as if they were)."""

    what: str  #: "begin", "end" or "repeat"
    pc: int  #: the LOOP's pc
    iteration: int
    ident: int


def expand(
    template: Template,
    runtime: Runtime,
    *,
    iteration_key: Callable[[int, Sequence[int]], Hashable] | None = None,
    only: frozenset[int] | None = None,
) -> Iterator[Concrete | Reuse]:
    """Yield the template's unit instructions in program (dispatch) order, loops unrolled and
    register-modified fields resolved for ``runtime``. Filter by ``unit`` for per-unit streams.

    For a consumer that reuses work (the cycle model): with ``iteration_key(loop pc,
    registers)``, evaluated as every loop iteration starts, the first iteration with a key is
    bracketed by :class:`Reuse` markers and every later one with the same key is one
    ``repeat`` marker (the key must capture whatever the consumer needs of the iteration);
    with ``only``, unit instructions at other pcs are skipped (not yielded). Without them
    (the functional simulator) every unit instruction is yielded as a :class:`Concrete`.

    Raises ProgramError for a runtime the template does not serve, unbalanced loops, a program
    that does not END, or a register write to R0..R2 (read-only).

    The hot path (one unit instruction) stays inline here; loops, registers and skipping are
    :class:`_Expansion`'s.
    """
    _check_runtime(template, runtime)
    x = _Expansion(template, runtime, iteration_key, only)
    instrs, resolved, regs, seq, stack = template.instrs, template._resolved, x.regs, x.seq, x.stack
    pc = 0
    while pc < len(instrs):
        ins = instrs[pc]
        op = ins.op
        if op == "LOOP":
            pc, marker = x.loop(pc, ins["count"])
            if marker is not None:
                yield marker
        elif op == "ENDLOOP":
            pc, end, begin = x.endloop(pc)
            if end is not None:
                yield end
            if begin is not None:
                yield begin
        elif op in _ALU:
            _alu(ins, regs, pc)
            if ins["rd"] == REG_SEQ:  # R2 reads CTX[SEQ] (module doc)
                regs[REG_POS] = runtime.ctx(regs[REG_SEQ])
            pc += 1
        elif op == "END":
            if stack:
                raise ProgramError(f"pc {pc}: END inside a loop")
            return
        elif x.mute:
            pc = x.skip_muted(pc, ins.unit)
        elif only is not None and pc not in only:
            pc = x.skip_unwanted(pc)
        else:
            u = ins.unit
            got = resolved[pc]
            static, dyn = got if got is not False else template.resolver(pc)  # type: ignore[misc]
            fields = dict(static)
            for name, v, add, r in dyn:  # the register-modified fields (module doc)
                if add:
                    fields[name] = v + regs[r]
                elif r:
                    y = regs[r]
                    fields[name] = v if y > v else (y if y > 0 else 0)
                else:
                    fields[name] = v
            yield Concrete(
                pc,
                op,
                u,
                ins.wait,
                ins.release,
                MappingProxyType(fields),
                seq[u],
                tuple((s[0], s[1]) for s in stack),
            )
            seq[u] += 1
            pc += 1
    raise ProgramError("program ends without END")


def _check_runtime(template: Template, runtime: Runtime) -> None:
    """ProgramError unless ``runtime`` is a valid step the template serves."""
    if runtime.length < 1 or runtime.pos < 0:
        raise ProgramError(
            f"runtime LEN = {runtime.length}, POS = {runtime.pos}: need LEN >= 1, POS >= 0"
        )
    ps = runtime.positions
    if ps and (len(ps) != runtime.length or min(ps) < 0 or runtime.pos != runtime.ctx(runtime.seq)):
        raise ProgramError(
            f"runtime positions {list(ps)}: need one POS >= 0 per row (LEN = {runtime.length}) "
            f"and POS = {runtime.pos} the first's"
        )
    if runtime.seq < 0 or (template.phase == "decode" and runtime.seq):
        raise ProgramError(
            f"runtime SEQ = {runtime.seq}: a prefill's slot is >= 0; a decode step's rows are "
            "slots 0..LEN-1 (SEQ starts at 0)"
        )
    if not template.serves(runtime):
        raise ProgramError(
            f"{template.phase} template {template.lo}..{template.hi} does not serve "
            f"LEN = {runtime.length}, POS = {runtime.pos}"
        )


def _alu(ins: Instr, regs: list[int], pc: int) -> None:
    """Run a SYS register instruction on ``regs``; R0..R2 are read-only."""
    op, rd = ins.op, ins["rd"]
    if rd <= REG_POS:
        raise ProgramError(f"pc {pc}: {op} writes read-only register R{rd}")
    if op == "SETI":
        regs[rd] = ins["imm"]
    elif op == "ADDI":
        regs[rd] = regs[ins["ra"]] + ins["imm"]
    elif op == "SUB":
        regs[rd] = regs[ins["ra"]] - regs[ins["rb"]]
    elif op == "ADD":
        regs[rd] = regs[ins["ra"]] + regs[ins["rb"]]
    elif op == "MINI":
        regs[rd] = min(regs[ins["ra"]], ins["imm"])
    else:
        regs[rd] = regs[ins["ra"]] * ins["imm"]


class _Expansion:
    """What :func:`expand` carries through a template besides the pc: the registers, each
    token unit's next sequence number, the loop stack, the iteration keys seen and the depth
    of the loop whose current iteration is a repeat (0: none; nothing is yielded inside)."""

    def __init__(
        self,
        template: Template,
        runtime: Runtime,
        iteration_key: Callable[[int, Sequence[int]], Hashable] | None,
        only: frozenset[int] | None,
    ) -> None:
        self.spans = template.spans  # ProgramError on unbalanced loops
        self.nxt, self.pre = template.skips
        self.regs = [0] * NREGS
        self.regs[REG_LEN] = runtime.length
        self.regs[REG_SEQ] = runtime.seq
        self.regs[REG_POS] = runtime.ctx(runtime.seq)
        self.seq = dict.fromkeys(TOKEN_UNITS, 0)
        self.stack: list[list[int]] = []  # [loop pc, iteration, count, ident recorded or -1]
        self.idents: dict[tuple[int, Hashable], int] = {}
        self.key = iteration_key
        self.only_pcs = sorted(only) if only is not None else []
        self.mute = 0

    def loop(self, pc: int, count: int) -> tuple[int, Reuse | None]:
        """LOOP at ``pc``: (next pc, the first iteration's marker if any); a loop of count 0
        is skipped whole."""
        if count == 0:
            return self.spans[pc] + 1, None
        self.stack.append([pc, 0, count, -1])
        return pc + 1, self.begin()

    def endloop(self, pc: int) -> tuple[int, Reuse | None, Reuse | None]:
        """ENDLOOP at ``pc``: (next pc, the end marker of a recorded iteration, the next
        iteration's marker)."""
        top = self.stack[-1]
        end = None
        if self.mute == len(self.stack):
            self.mute = 0
        elif top[3] >= 0:
            end = Reuse("end", top[0], top[1], top[3])
        top[1] += 1
        if top[1] < top[2]:
            top[3] = -1
            return top[0] + 1, end, self.begin()
        self.stack.pop()
        return pc + 1, end, None

    def begin(self) -> Reuse | None:
        """An iteration of the innermost loop starts: with an iteration key, outside a repeat,
        mark it the first with its key (recorded) or a repeat (muted up to its ENDLOOP)."""
        if self.key is None or self.mute:
            return None
        top = self.stack[-1]
        k = (top[0], self.key(top[0], self.regs))
        ident = self.idents.get(k)
        if ident is None:
            ident = self.idents[k] = len(self.idents)
            top[3] = ident
            return Reuse("begin", top[0], top[1], ident)
        self.mute = len(self.stack)
        return Reuse("repeat", top[0], top[1], ident)

    def advance(self, a: int, b: int) -> int:
        """Count the unit instructions at pcs ``a``..``b - 1`` as dispatched but not yielded;
        returns ``b``."""
        pa, pb = self.pre[a], self.pre[b]
        seq = self.seq
        for v in TOKEN_UNITS:
            seq[v] += pb[v] - pa[v]
        return b

    def skip_muted(self, pc: int, unit: Unit) -> int:
        """In a repeated iteration: the unit instruction at ``pc`` and the ones after it up to
        the next SYS instruction (where the pc goes)."""
        self.seq[unit] += 1
        return self.advance(pc + 1, self.nxt[pc + 1])

    def skip_unwanted(self, pc: int) -> int:
        """A pc not in ``only``: skip to the next pc in it or the next SYS instruction."""
        only_pcs, nxt = self.only_pcs, self.nxt
        k = bisect_left(only_pcs, pc)
        to = only_pcs[k] if k < len(only_pcs) and only_pcs[k] < nxt[pc] else nxt[pc]
        return self.advance(pc, to)


def hbm_channel(addr: int, channels: int, interleave_bytes: int) -> int:
    """The HBM pseudo-channel holding byte ``addr`` (addresses interleave every granule)."""
    return (addr // interleave_bytes) % channels


# --------------------------------------------------------------------------------------------
# Dispatch (the one definition of the token discipline)


def dispatch(
    streams: Mapping[Unit, Sequence[Any]],
    queues: dict[tuple[int, int], deque[Any]],
    fire: Callable[[Unit, Any, list[Any]], Any] | None = None,
    ready: Callable[[Unit, Any], bool] | None = None,
    pos: dict[Unit, int] | None = None,
) -> dict[Unit, int]:
    """Run each unit's in-order ``streams`` (items with ``wait`` / ``release`` masks) under the
    token discipline of the module doc, from and into the token ``queues`` ((src, dst) -> FIFO).

    An item starts when every queue its ``wait`` names holds a token; it pops them, runs as
    ``fire(unit, item, popped tokens)`` and pushes what ``fire`` returns (None without ``fire``)
    to every queue its ``release`` names. Units take turns in ``streams`` order, each running
    until it blocks, until no unit can start anything. Each queue has one consumer, so any
    order reaches the same end. Returns how far each stream got: a stream not at its end is
    blocked (a deadlock, for the caller to report).

    Multi-board: ``ready(unit, item)``, asked once an item's tokens are there, holds it back
    until its link data are (a RECV before the SEND, a collective before every board joined);
    ``pos`` resumes the streams where an earlier call left them (updated in place).
    """
    pos = pos if pos is not None else dict.fromkeys(streams, 0)
    progress = True
    while progress:
        progress = False
        for u, s in streams.items():
            i = pos[u]
            while i < len(s):
                item = s[i]
                w = item.wait
                if w and any(w >> v & 1 and not queues.get((v, u)) for v in TOKEN_UNITS):
                    break
                if ready is not None and not ready(u, item):
                    break
                popped = [queues[(v, u)].popleft() for v in TOKEN_UNITS if w >> v & 1]
                token = fire(u, item, popped) if fire is not None else None
                r = item.release
                for v in TOKEN_UNITS:
                    if r >> v & 1:
                        queues.setdefault((u, v), deque()).append(token)
                i += 1
                progress = True
            pos[u] = i
    return pos
