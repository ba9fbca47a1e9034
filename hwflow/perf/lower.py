"""Price a program's expanded instructions into machine ops and count their actions.

The instructions come from :func:`hwflow.isa.expand` (the one definition of loops and
registers); the cycles come from :mod:`hwflow.costs` (the one definition of every unit's
cost, shared with the RTL). This module only reads the instruction fields and calls them:

* LD / ST: ``rows`` rows of ``row_bytes`` at HBM ``hbm`` spaced ``hbm_stride`` apart
  (contiguous when the stride equals the row) -> :func:`~hwflow.costs.hbm_pieces`; the rows
  of a strided transfer that are shorter than the interleave granule hop across channels.
* MM / MV: ``out[rows, cols] = A[rows, k] @ B[cols, k]^T`` with ``n`` of every ``m`` weights
  kept -> :func:`~hwflow.costs.matmul_unit_cost` on the preset's ``mpe`` / ``mv`` engine. A
  reduction that is not a whole number of M-blocks is padded to the next block (the chain
  consumes whole blocks).
* SFU: ``rows x cols`` elements, read as many times as :func:`~hwflow.costs.sfu_passes`
  says (softmax and normalisation: the preset's passes, LayerNorm one more; the per-row INT8
  quantization of the gated product / OPT's ReLU: a row-maximum pass) ->
  :func:`~hwflow.costs.sfu_op_cost`; the bytes per element of each operand
  (:data:`hwflow.isa.SFU_FORMATS`: the INT32 residual, INT16 gate/up, INT8 outputs with
  their row factors) count in the buffer actions.
* SYNC: :func:`~hwflow.costs.sync_cost`.

Reuse (:func:`lower_reused`, :func:`step_signature`). A loop iteration is priced once per
distinct *iteration key* (:func:`hwflow.isa.expand` replays the others): the exact values of
the live-in registers the body uses anywhere but in an LD/ST HBM address, and those it uses
only in addresses (through ADD/SUB/ADDI/MULI) modulo the channel map's period, the only way an
address enters a cost. A step's *signature* prices only the instructions with a priced field
(not an on-chip offset or the mask position) that depends on POS or on the sequence slot
(register taint from R2 and R15, which selects the context R2 reads), and
LEN: two steps of one template with equal signatures have equal
priced programs, so one simulation stands for both, exactly. Equal priced results are interned
(one object) and numbered (:attr:`MOp.key <hwflow.perf.machine.MOp.key>`, from a counter that
never repeats in a process), so equal segments are recognised by their ops' numbers
(:class:`~hwflow.perf.SegmentMemo`) and signatures hold numbers, not object ids.

Caches. Priced ops, loop analyses and simulated segments live in a :class:`PerfContext`, one
per simulation (per worker process): dropped with it, so a long sweep does not grow memory.

Actions per op (for :mod:`hwflow.energy`): MACs by weight bits; buffer bits read per beat
(one M-block of INT8 activations per token lane and every chain's weight slots with their
indices, plus the A rows' row factors) and written (outputs at the instruction's ``obits``);
HBM bytes; special-function element operations; instruction
words.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from math import ceil, log2

from hwflow.config import HardwarePreset
from hwflow.costs import (
    HbmBurst,
    HbmPiece,
    effective_nm,
    hbm_bursts,
    hbm_pieces,
    hbm_runs,
    ld_flush_cycles,
    matmul_unit_cost,
    pv_nm,
    sfu_op_cost,
    sfu_passes,
    sfu_shared_port,
    sync_cost,
)
from hwflow.energy import Actions
from hwflow.errors import CapacityError, ProgramError
from hwflow.isa import (
    LINK_OPS,
    MATMUL_FUNCS,
    OPCODES,
    REG_POS,
    REG_SEQ,
    ROW_FACTOR_BYTES,
    SFU_FORMATS,
    SFU_FUNCS,
    SYS_ALU,
    Buf,
    Concrete,
    Reuse,
    Runtime,
    Template,
    Unit,
    expand,
)
from hwflow.model import group_scale_bytes
from hwflow.perf.links import price_link
from hwflow.perf.machine import MOp, SegmentMemo

__all__ = ["OpActions", "PerfContext", "lower", "lower_reused", "step_signature"]

_WORDS = {s.name: s.words for s in OPCODES}
_BUF_NAMES = {
    Buf.WEIGHT: "weight",
    Buf.ACT: "act",
    Buf.KV: "kv",
    Buf.SCORE: "score",
    Buf.PARAM: "param",
}


@dataclass(frozen=True, slots=True)
class OpActions:
    """The actions of one op (summed into :class:`hwflow.energy.Actions`)."""

    wbits: int = 0
    macs: int = 0
    buf_read_bits: int = 0
    buf_write_bits: int = 0
    hbm_read: int = 0
    hbm_write: int = 0
    sfu_ops: int = 0
    words: int = 0


def _mask(m: int) -> tuple[int, ...]:
    return tuple(u for u in range(5) if m >> u & 1)


def _merge(pieces: Iterable[HbmPiece]) -> tuple[HbmPiece, ...]:
    """Pieces of several rows of one transfer: a channel streams its rows one after another."""
    by: dict[int, list[int]] = {}
    for p in pieces:
        acc = by.setdefault(p.channel, [0, 0, 1, 0])
        acc[0] += p.nbytes
        acc[1] += p.occupancy
        acc[2] &= p.same_channel
        acc[3] |= p.write
    return tuple(
        HbmPiece(channel=c, nbytes=v[0], occupancy=v[1], same_channel=bool(v[2]), write=bool(v[3]))
        for c, v in sorted(by.items())
    )


class _Pricer:
    def __init__(self, hw: HardwarePreset) -> None:
        self.hw = hw
        self.period = hw.hbm.interleave_bytes * hw.hbm.channels
        self.cache: dict[tuple, tuple[MOp, OpActions]] = {}
        self.interned: dict[tuple[MOp, OpActions], tuple[MOp, OpActions]] = {}
        self.pieces = lru_cache(maxsize=65536)(self._pieces)
        self.bursts = lru_cache(maxsize=65536)(self._bursts)

    def _pieces(
        self, base: int, rows: int, row_bytes: int, stride: int, write: bool = False
    ) -> tuple[HbmPiece, ...]:
        # the channel map repeats every interleave x channels bytes: price at base mod period
        hw = self.hw
        runs = hbm_runs(hw, base, rows, row_bytes, stride)
        if len(runs) == 1:
            return tuple(hbm_pieces(hw, runs[0][0], runs[0][1], write=write))
        return _merge(p for a, n, hop in runs for p in hbm_pieces(hw, a, n, hop=hop, write=write))

    def _bursts(
        self, base: int, rows: int, row_bytes: int, stride: int, write: bool = False
    ) -> tuple[HbmBurst, ...]:
        """The transfer's AXI bursts, run after run (:func:`hwflow.costs.hbm_bursts`)."""
        runs = hbm_runs(self.hw, base, rows, row_bytes, stride)
        return tuple(
            b for a, n, hop in runs for b in hbm_bursts(self.hw, a, n, hop=hop, write=write)
        )

    def _check_buf(
        self, c: Concrete, buf: int, off: int, rows: int, stride: int, width: int
    ) -> None:
        if rows == 0 or width == 0:
            return
        try:
            name = _BUF_NAMES[Buf(buf)]
        except (ValueError, KeyError):
            raise ProgramError(f"{c.op} (pc {c.pc}): unknown buffer id {buf}") from None
        end = off + (rows - 1) * stride + width
        have = self.hw.buffers.bytes(name)
        if end > have:
            raise CapacityError(
                f"{c.op} (pc {c.pc}) touches {name} buffer bytes [{off}, {end}) but preset"
                f" {self.hw.name} has {have}"
            )

    def price(self, c: Concrete) -> tuple[MOp, OpActions]:
        op = c.op
        if op == "LD" or op == "ST":
            # the cost depends on the address only modulo the channel map's period, and for a
            # contiguous transfer inside one granule only on that granule's channel
            f = c.fields
            hbm, rows, stride, row_bytes = f["hbm"], f["rows"], f["hbm_stride"], f["row_bytes"]
            if hbm < 0:  # a register made the address negative (rows and strides are unsigned)
                raise ProgramError(
                    f"{op} (pc {c.pc}) starts at HBM byte {hbm}; HBM bytes are 0 and up"
                )
            last = hbm + (rows - 1) * stride + row_bytes if rows else hbm
            if last > self.hw.hbm.capacity_bytes:
                raise CapacityError(
                    f"{op} (pc {c.pc}) reaches HBM byte {last}, beyond the"
                    f" {self.hw.hbm.capacity_bytes} bytes of preset {self.hw.name}"
                )
            where: int | tuple[int, int] = hbm % self.period
            g = self.hw.hbm.interleave_bytes
            if (rows <= 1 or stride == row_bytes) and where % g + rows * row_bytes <= g:
                # inside one granule: only its channel and its offset in a buffer word matter
                # (its HBM atoms, the LD realigner's flush: costs.ld_flush_cycles)
                where = (where // g, where % self.hw.buffers.word_bytes)
            key: tuple = (
                op,
                c.wait,
                c.release,
                where,
                stride,
                row_bytes,
                rows,
                f["buf"],
                f["off"],
                f["stride"],
                f["kind"],
            )
        else:
            key = (op, c.wait, c.release, *c.fields.values())
        hit = self.cache.get(key)
        if hit is None:  # equal prices are one object with one number (module doc)
            hit = self._price(c)
            got = self.interned.get(hit)
            if got is None:
                got = self.interned[hit] = (replace(hit[0], key=next(_KEYS)), hit[1])
            hit = self.cache[key] = got
        return hit

    def _price(self, c: Concrete) -> tuple[MOp, OpActions]:
        """The op and actions of one instruction, by its unit's cost."""
        op = c.op
        if op in ("LD", "ST"):
            return self._price_transfer(c)
        if op in ("MM", "MV"):
            return self._price_matmul(c)
        if op == "SFU":
            return self._price_sfu(c)
        if op in LINK_OPS:  # multi-board: the links' SimPy model (hwflow.perf.links)
            words = _WORDS[op]
            mop = price_link(self.hw, c, words, _mask(c.wait), _mask(c.release))
            return mop, OpActions(words=words)
        if op.startswith("SYNC."):
            cost = sync_cost()
            wait, release, words = _mask(c.wait), _mask(c.release), _WORDS[op]
            mop = MOp(int(c.unit), op, words, cost.beats, cost.latency, wait, release)
            return mop, OpActions(words=words)
        raise ProgramError(f"pc {c.pc}: the cycle model has no cost for opcode {op!r}")

    def _price_transfer(self, c: Concrete) -> tuple[MOp, OpActions]:
        """LD / ST: the HBM pieces per channel (the address folded into one layout period:
        :meth:`price` has refused a transfer outside the HBM, so the folded one, which starts
        no later, stays inside it too), the bytes read and written."""
        f, op = c.fields, c.op
        words = _WORDS[op]
        rows, row_bytes = f["rows"], f["row_bytes"]
        hbm, stride = f["hbm"], f["hbm_stride"]
        nbytes = rows * row_bytes
        self._check_buf(c, f["buf"], f["off"], rows, f["stride"] or row_bytes, row_bytes)
        pieces = self.pieces(hbm % self.period, rows, row_bytes, stride, op == "ST")
        bursts = self.bursts(hbm % self.period, rows, row_bytes, stride, op == "ST")
        # an LD's latency: its realigner's flush after the last HBM word (the HBM decides the rest)
        flush = ld_flush_cycles(self.hw, hbm, rows, row_bytes, stride, f["off"], f["stride"])
        mop = MOp(int(c.unit), op, words, 0, flush if op == "LD" else 0, _mask(c.wait),
                  _mask(c.release), pieces, sum(p.nbytes for p in pieces),
                  sum(p.occupancy for p in pieces), bursts)  # fmt: skip
        ld = op == "LD"
        acts = OpActions(
            hbm_read=nbytes if ld else 0,
            hbm_write=0 if ld else nbytes,
            buf_write_bits=8 * nbytes if ld else 0,
            buf_read_bits=0 if ld else 8 * nbytes,
            words=words,
        )
        return mop, acts

    def _price_matmul(self, c: Concrete) -> tuple[MOp, OpActions]:
        """MM / MV: :func:`~hwflow.costs.matmul_unit_cost` at the N:M the chain runs, the operand
        bits every beat reads, the output written."""
        hw, f, op = self.hw, c.fields, c.op
        unit, words = int(c.unit), _WORDS[op]
        wait, release = _mask(c.wait), _mask(c.release)
        func = MATMUL_FUNCS[f["func"]] if f["func"] < len(MATMUL_FUNCS) else f["func"]
        rows, cols, k = f["rows"], f["cols"], f["k"]
        n, m, wbits = f["n"], f["m"], f["wbits"]
        engine = hw.mpe if op == "MM" else hw.mv
        if rows == 0 or cols == 0 or k == 0:
            return MOp(unit, op, words, 0, 0, wait, release), OpActions(words=words)
        if m == 0 or n == 0:
            raise ProgramError(f"{op} (pc {c.pc}): sparsity n:m = {n}:{m} needs n, m >= 1")
        ne, me = pv_nm(hw, engine, cols) if func == "pv" else effective_nm(hw, n, m)
        kp = ceil(k / me) * me
        group = 1 << f["wgroup"] if f["wgroup"] else None
        sliced = func == "pv" and engine.dual_int8  # bit-sliced UINT8 P (costs doc)
        cost = matmul_unit_cost(engine, me, rows, cols, kp, ne, group, sliced=sliced)
        idx = 0 if ne == me else int(log2(me))
        per_beat = me * 8 * engine.rows + engine.chains * engine.chain_length * (wbits + idx)
        gbits = 8 * cols * group_scale_bytes(kp, group)  # the group multipliers, once each
        rowf = 8 * ROW_FACTOR_BYTES * rows if f["arow"] else 0  # the A rows' row factors
        rowf += 8 * ROW_FACTOR_BYTES * cols if f["brow"] else 0  # rotated keys' factors
        mop = MOp(unit, f"{op}.{func}", words, cost.beats, cost.latency, wait, release)
        acts = OpActions(
            wbits=wbits,
            macs=cost.macs,
            buf_read_bits=cost.operand_beats * per_beat + rowf + gbits,
            buf_write_bits=rows * cols * f["obits"],
            words=words,
        )
        return mop, acts

    def _price_sfu(self, c: Concrete) -> tuple[MOp, OpActions]:
        """SFU: :func:`~hwflow.costs.sfu_op_cost` of the function's passes, the operand bytes
        of its formats (:data:`hwflow.isa.SFU_FORMATS`)."""
        hw, f = self.hw, c.fields
        unit, words = int(c.unit), _WORDS["SFU"]
        wait, release = _mask(c.wait), _mask(c.release)
        func = SFU_FUNCS[f["func"]] if f["func"] < len(SFU_FUNCS) else str(f["func"])
        elements = f["rows"] * f["cols"]
        if elements == 0:
            return MOp(unit, f"SFU.{func}", words, 0, 0, wait, release), OpActions(words=words)
        fmt = SFU_FORMATS.get(func)
        if fmt is None:
            raise ProgramError(f"SFU (pc {c.pc}): function {func} unknown")
        hd = f["aux"]
        if func in ("ropeq", "ropek") and (hd < 2 or hd & (hd - 1) or f["cols"] % hd):
            raise ProgramError(
                f"SFU (pc {c.pc}): {func} head_dim aux={hd} must be a power of two dividing "
                f"cols={f['cols']}"
            )
        center = bool(f["aux"] & 1) if func == "norm" else False
        passes = sfu_passes(hw, func, center, f["aux"])
        # rotated keys' Hadamard stages run on the SFU's head scratch: A is read once
        reads = 1 if func in ("ropeq", "ropek") else passes
        shared = sfu_shared_port(func, f["a_buf"], f["b_buf"])
        cost = sfu_op_cost(hw, func, f["rows"], f["cols"], center, f["aux"], shared)
        # the B operand (rope: its cos/sin rows) and the norm's INT16 gains, read once
        second = elements * 8 * (fmt.b + (2 if func == "norm" else 0))
        rowf = 8 * ROW_FACTOR_BYTES * f["rows"] if fmt.row_factor else 0
        if fmt.head_factor:  # a factor per head segment (ropek)
            rowf = 8 * ROW_FACTOR_BYTES * f["rows"] * (f["cols"] // f["aux"])
        mop = MOp(unit, f"SFU.{func}", words, cost.beats, cost.latency, wait, release)
        acts = OpActions(
            sfu_ops=elements * passes,
            buf_read_bits=elements * 8 * fmt.a * reads + second,
            buf_write_bits=elements * 8 * fmt.o + rowf,
            words=words,
        )
        return mop, acts


#: Numbers of interned priced ops: never repeated in a process, so keys made of them stay
#: valid whichever context made them (unlike ``id()``, reused once an object is freed).
_KEYS = itertools.count()


@dataclass
class PerfContext:
    """The caches of simulating programs on one preset: priced ops (interned and numbered),
    loop analyses per template and simulated segments. Keep one for a simulation (or a
    worker's share of it) and drop it afterwards; nothing is cached globally."""

    hw: HardwarePreset
    memo: SegmentMemo = dataclasses.field(default_factory=SegmentMemo)
    pricer: _Pricer = dataclasses.field(init=False)
    analyses: dict[int, tuple[Template, _Analysis]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pricer = _Pricer(self.hw)


def _context(hw: HardwarePreset, ctx: PerfContext | None) -> PerfContext:
    """``ctx`` checked against ``hw``, or a fresh context."""
    if ctx is None:
        return PerfContext(hw)
    if ctx.hw.digest != hw.digest:
        raise ValueError(f"context of preset {ctx.hw.name} used for preset {hw.name}")
    return ctx


def _pricer(hw: HardwarePreset) -> _Pricer:
    """A fresh pricer for ``hw`` (tests price single instructions with it)."""
    return _Pricer(hw)


def _count(acts: Sequence[OpActions]) -> Actions:
    # the priced objects are shared by identical instructions: count them by identity
    counts = Counter(map(id, acts))
    by_id = {id(a): a for a in acts}
    total = Actions()
    for k, times in counts.items():
        a = by_id[k]
        if a.macs:
            total.macs[a.wbits] = total.macs.get(a.wbits, 0) + a.macs * times
        total.buffer_read_bits += a.buf_read_bits * times
        total.buffer_write_bits += a.buf_write_bits * times
        total.hbm_read_bytes += a.hbm_read * times
        total.hbm_write_bytes += a.hbm_write * times
        total.sfu_ops += a.sfu_ops * times
        total.instr_words += a.words * times
    return total


def lower(
    hw: HardwarePreset, instrs: Iterable[Concrete], ctx: PerfContext | None = None
) -> tuple[list[MOp], Actions]:
    """Price ``instrs`` (dispatch order) for ``hw``; return the machine ops and their actions."""
    price = _context(hw, ctx).pricer.price
    ops: list[MOp] = []
    acts: list[OpActions] = []
    for c in instrs:
        mop, act = price(c)
        ops.append(mop)
        acts.append(act)
    return ops, _count(acts)


# ------------------------------------------------------------------------------------------
# Reuse: iteration keys and step signatures (see the module doc)


@dataclass(frozen=True)
class _Analysis:
    #: loop pc -> (exact, mod) registers of its iteration key (None: the loop runs once)
    keys: dict[int, tuple[tuple[int, ...], tuple[int, ...]] | None]
    tainted: frozenset[int]  #: unit pcs with a priced field that depends on POS
    period: int

    def key(self, loop: int, regs: Sequence[int]) -> Hashable:
        got = self.keys[loop]
        if got is None:
            return object()  # a key equal to no other
        exact, mod = got
        p = self.period
        return (tuple([regs[r] for r in exact]), tuple([regs[r] % p for r in mod]))


#: Fields no price depends on: on-chip offsets (read only by the bounds checks of
#: :meth:`_Pricer._price`) and the softmax mask position.
_COST_FREE = frozenset({"off", "a_off", "b_off", "o_off", "qpos"})


def _uses(template: Template) -> tuple[dict[int, list[tuple[int, bool]]], dict[int, list[int]]]:
    """Per unit pc, (register, used only as an LD/ST HBM address) of its register-modified
    fields, and the registers of those a price depends on (pcs without any left out)."""
    uses: dict[int, list[tuple[int, bool]]] = {}
    priced: dict[int, list[int]] = {}
    for pc, ins in enumerate(template.instrs):
        spec = ins.spec
        if spec.unit == Unit.SYS or not spec.resolution[1]:
            continue
        f, xfer = ins.fields, ins.op in ("LD", "ST")
        u: list[tuple[int, bool]] = []
        c: list[int] = []
        for name, _, field in spec.resolution[1]:
            r = f[field]
            if r:
                u.append((r, xfer and name == "hbm"))
                if name not in _COST_FREE:
                    c.append(r)
        if u:
            uses[pc] = u
        if c:
            priced[pc] = c
    return uses, priced


def _srcs(ins) -> list[int]:
    """Source registers of a SYS ALU instruction."""
    if ins.op == "SETI":
        return []
    return [ins["ra"], ins["rb"]] if ins.op in ("ADD", "SUB") else [ins["ra"]]


def _defs(ins) -> tuple[int, ...]:
    """Registers a SYS ALU instruction writes: its ``rd``, and R2 with R15 (R2 reads the
    context table at SEQ, :mod:`hwflow.isa`; not a ring operation of the sources)."""
    rd = ins["rd"]
    return (rd, REG_POS) if rd == REG_SEQ else (rd,)


def _analyse(template: Template, period: int, ctx: PerfContext | None = None) -> _Analysis:
    """The iteration keys and POS-tainted pcs of ``template`` (kept in ``ctx``, which also
    holds the template, so the id cannot be reused while the entry lives)."""
    hit = ctx.analyses.get(id(template)) if ctx is not None else None
    if hit is not None and hit[0] is template:
        return hit[1]
    instrs = template.instrs
    spans = template.spans
    ring = {"ADD", "SUB", "ADDI", "MULI"}
    uses, priced = _uses(template)
    keys: dict[int, tuple[tuple[int, ...], tuple[int, ...]] | None] = {}
    for lp, end in spans.items():
        around = [q for q, e in spans.items() if q <= lp < e]  # itself and its enclosing loops
        if all(instrs[q]["count"] <= 1 for q in around):
            keys[lp] = None  # its body runs once per step: nothing to reuse
            continue
        body = instrs[lp + 1 : end]
        exact: set[int] = set()
        mod: set[int] = set()
        for pc in range(lp + 1, end):
            for r, addr in uses.get(pc, ()):
                (mod if addr else exact).add(r)
        alu = [ins for ins in body if ins.op in SYS_ALU]
        changed = True
        while changed:  # flow-insensitive closure over the body's register arithmetic
            changed = False
            for ins in alu:
                srcs = _srcs(ins)
                for rd in _defs(ins):
                    ring_op = ins.op in ring and rd == ins["rd"]
                    if rd in exact or (rd in mod and not ring_op):
                        new = set(srcs) - exact
                        exact |= new
                    elif rd in mod:
                        new = set(srcs) - mod - exact
                        mod |= new
                    else:
                        new = set()
                    changed |= bool(new)
        # live-in: read before the body's own top-level writes (pc order)
        live: set[int] = set()
        written: set[int] = set()
        depth = 0
        for pc, ins in enumerate(body, start=lp + 1):
            if ins.op == "LOOP":
                depth += 1
            elif ins.op == "ENDLOOP":
                depth -= 1
            elif ins.op in SYS_ALU:
                live |= set(_srcs(ins)) - written
                if depth == 0:
                    written.update(_defs(ins))
            elif ins.unit != Unit.SYS:
                live |= {r for r, _ in uses.get(pc, ())} - written
        live.discard(0)
        keys[lp] = (tuple(sorted(exact & live)), tuple(sorted((mod - exact) & live)))
    taint = {REG_POS, REG_SEQ}  # signatures compare steps of one LEN (any contexts, slots)
    changed = True
    while changed:
        changed = False
        for ins in instrs:
            if ins.op in SYS_ALU and ins["rd"] not in taint and taint & set(_srcs(ins)):
                taint.add(ins["rd"])
                changed = True
    tainted = frozenset(pc for pc, regs in priced.items() if taint.intersection(regs))
    a = _Analysis(keys, tainted, period)
    if ctx is not None:
        ctx.analyses[id(template)] = (template, a)
    return a


def lower_reused(
    hw: HardwarePreset, template: Template, runtime: Runtime, ctx: PerfContext | None = None
) -> tuple[list[MOp], Actions]:
    """:func:`lower` of the whole step, each distinct loop iteration expanded and priced once
    and copied for the iterations with its key (the same result, see the module doc)."""
    ctx = _context(hw, ctx)
    price = ctx.pricer.price
    an = _analyse(template, ctx.pricer.period, ctx)
    ops: list[MOp] = []
    acts: list[OpActions] = []
    done: dict[int, tuple[list[MOp], list[OpActions]]] = {}
    open_: list[tuple[int, int]] = []
    for c in expand(template, runtime, iteration_key=an.key):
        if type(c) is Reuse:
            if c.what == "begin":
                open_.append((c.ident, len(ops)))
            elif c.what == "end":
                ident, at = open_.pop()
                done[ident] = (ops[at:], acts[at:])
            else:
                o, a = done[c.ident]
                ops.extend(o)
                acts.extend(a)
            continue
        mop, act = price(c)  # type: ignore[arg-type]
        ops.append(mop)
        acts.append(act)
    return ops, _count(acts)


def step_signature(ctx: PerfContext, template: Template, runtime: Runtime) -> tuple:
    """LEN and the priced instructions of a step that depend on POS, with the iteration-reuse
    structure: equal signatures (same template) mean equal priced programs (module doc)."""
    price = ctx.pricer.price
    an = _analyse(template, ctx.pricer.period, ctx)
    out: list[Hashable] = [runtime.length]
    for c in expand(template, runtime, iteration_key=an.key, only=an.tainted):
        if type(c) is Reuse:
            out.append((c.what, c.ident))
        else:
            out.append(price(c)[0].key)  # type: ignore[arg-type]
    return tuple(out)
