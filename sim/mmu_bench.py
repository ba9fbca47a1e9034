"""cocotb bench of the matmul unit (``hwflow.hw.machine.mmu``) on Verilator.

A Python model of the five on-chip buffers serves the unit's read and write ports (grant in
the request's cycle, read data the cycle after; random grant stalls in ``random_ops``). Each
test draws random MM/MV instructions of every func (linear, head: dense and N:M, wbits 2/3/4/8,
bias, row factors or none; qk; pv with UINT8 probabilities; obits 8/16/32; token, column and
key extents clamped past a group or zero), lays their operands into the buffers in the formats
the compiler writes (weight tiles by :meth:`hwflow.compiler.layout.TileSpec.sections` and
``pack_rows``), runs the instruction on the RTL, and compares every byte of every buffer with
:meth:`hwflow.funcsim.FuncSim.execute` run on the same buffer contents (the executable
reference, independent of the RTL). Per instruction the busy cycles (command accepted through
``done``, inclusive, as :mod:`hwflow.hw.machine.cycles` counts them) are recorded next to the cycle model's latency for it (:func:`hwflow.perf.lower.lower`:
:func:`hwflow.costs.matmul_cost`, 0 for an empty extent).

Environment: ``HWFLOW_PRESET``, ``HWFLOW_KIND`` (mv/mpe), ``HWFLOW_WB`` (bytes per buffer word,
default 32), ``HWFLOW_STATS`` (JSON out),
``HWFLOW_CORRUPT=1`` flips one expected byte (the run must then fail), ``HWFLOW_OPS``
(instructions per test), ``HWFLOW_CYCLE_TOL`` (assert every instruction's busy cycles within
this relative tolerance of the model's latency) and ``HWFLOW_CYCLE_SKEW`` (scale the expected
cycles: a must-fail check).
"""

from __future__ import annotations

import os
import time
from typing import Any

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge

from hwflow.compiler.layout import ALIGN, BeatGeometry, TileSpec, encode_tile
from hwflow.config import load_hw
from hwflow.funcsim import FuncSim
from hwflow.hw.cosim import save_bench_stats
from hwflow.hw.machine.decode import cmd_layout
from hwflow.hw.pack import encode
from hwflow.isa import MATMUL_FUNCS, Buf, Concrete, Unit
from hwflow.numerics import GROUP_MULT_MAX, nm_compress, qmax
from hwflow.perf.lower import lower

_STATS: dict[str, Any] = {}
#: Share of qk instructions drawn with rotated keys' factors (``brow``, isa v5)
BROW_P = float(os.environ.get("HWFLOW_BROW_P", "0.5"))
_BROW_RNG = np.random.default_rng(int(os.environ.get("HWFLOW_SEED", "7")) + 99)
#: Bytes per buffer word of the unit under test (``unit_design``'s ``word_bytes``).
_WB = int(os.environ.get("HWFLOW_WB", "32"))


def _save(**kv: Any) -> None:
    _STATS.update(kv)
    save_bench_stats(_STATS)


class Buffers:
    """The five buffers as byte arrays, serving the unit's ports every cycle."""

    def __init__(self, dut: Any, hw: Any, rng: np.random.Generator, stall: float) -> None:
        self.dut, self.rng, self.stall = dut, rng, stall
        self.mem = {b: np.zeros(hw.buffers.bytes(b.name.lower()), np.uint8) for b in Buf}
        self.reads = self.writes = 0
        #: byte span [first, end) of the current instruction's group multipliers (WEIGHT)
        self.gmult: tuple[int, int] | None = None
        #: a brow qk's K rows (b_off, b_stride, keys): where its key factors sit (KV)
        self.keyf: tuple[int, int, int] | None = None

    def port(self, kind: str, b: Buf, sig: str) -> Any:
        return getattr(self.dut, f"{kind}_{b.name.lower()}__{sig}")

    def _grant(self) -> int:
        return int(self.rng.random() >= self.stall)

    async def serve(self) -> None:
        """Every cycle: read data for last cycle's granted requests, grant (or stall) this
        cycle's requests, apply granted writes. Without stalls the grants stay tied high."""
        rd = {b: {s: self.port("rd", b, s) for s in ("en", "addr", "grant", "data")} for b in Buf}
        wr = {b: {s: self.port("wr", b, s) for s in ("en", "addr", "grant", "data", "strb")}
              for b in Buf}  # fmt: skip
        tied = self.stall == 0.0
        for b in Buf:
            rd[b]["grant"].value = int(tied)
            wr[b]["grant"].value = int(tied)
        pend: dict[Buf, int] = {}
        while True:
            await FallingEdge(self.dut.clk)
            for b in Buf:
                mem, r, w = self.mem[b], rd[b], wr[b]
                if b in pend:
                    a = pend.pop(b)
                    r["data"].value = int.from_bytes(
                        mem[a * _WB : (a + 1) * _WB].tobytes(), "little"
                    )
                if r["en"].value:
                    g = 1 if tied else self._grant()
                    if not tied:
                        r["grant"].value = g
                    if g:
                        pend[b] = int(r["addr"].value)
                        self.reads += 1
                elif not tied:
                    r["grant"].value = 0
                if w["en"].value:
                    g = 1 if tied else self._grant()
                    if not tied:
                        w["grant"].value = g
                    if g:
                        a = int(w["addr"].value)
                        data = int(w["data"].value).to_bytes(_WB, "little")
                        strb = int(w["strb"].value)
                        for i in range(_WB):
                            if strb >> i & 1:
                                mem[a * _WB + i] = data[i]
                        self.writes += 1
                elif not tied:
                    w["grant"].value = 0


def _tile(
    rng: np.random.Generator,
    cols: int,
    k: int,
    n: int,
    m: int,
    bits: int,
    bias: bool,
    geo: BeatGeometry,
    group: int | None = None,
) -> np.ndarray:
    """A random weight tile's bytes in the compiler's format (dense when n == m), with
    random group multipliers (1..255) per row and ``group`` inputs when given."""
    q = qmax(bits)
    codes = rng.integers(-q, q + 1, size=(cols, k))
    idx = None
    if n != m:
        mask = np.zeros((cols, k // m, m), bool)
        for r in range(cols):
            for g in range(k // m):
                mask[r, g, rng.choice(m, n, replace=False)] = True
        codes, idx = nm_compress(codes, mask.reshape(cols, k), n, m)
    b = rng.integers(-(2**20), 2**20, cols) if bias else None
    mult = rng.integers(1, 2**15, cols)
    shift = rng.integers(0, 40, cols)
    gm = None if group is None else rng.integers(1, GROUP_MULT_MAX + 1, (cols, k // group))
    blob = encode_tile(codes, idx, b, mult, shift, n, m, bits, geo, gm)
    assert blob.size == TileSpec.sections(cols, k, n, m, bits, bias, geo, group)["end"]
    return blob


def _rows_with_factors(rng, mem, off, stride, rows, width, lo, hi, dtype):
    """Random rows of ``width`` elements at off (stride), each with a row factor before it."""
    for r in range(rows):
        at = off + r * stride
        mem[at - 4 : at - 2] = np.frombuffer(
            np.uint16(rng.integers(2**14, 2**15)).tobytes(), np.uint8
        )
        mem[at - 2 : at] = np.frombuffer(np.int16(rng.integers(0, 24)).tobytes(), np.uint8)
        mem[at : at + width] = rng.integers(lo, hi + 1, width).astype(dtype).view(np.uint8)


def random_instr(
    rng: np.random.Generator, hw: Any, kind: str, bufs: Buffers, func: str, empty: bool = True
) -> dict:
    """Draw one instruction of ``func`` and lay its operands into the buffers (``empty``: a
    zero token or column extent now and then)."""
    eng = getattr(hw, kind)
    m = hw.sparsity.m
    rows = 1 if kind == "mv" else int(rng.integers(1, 6))
    if empty and rng.random() < 0.1:
        rows = 0
    obits = int(rng.choice([8, 16, 32]))
    f: dict[str, int] = {"func": MATMUL_FUNCS.index(func), "rows": rows, "m": m, "obits": obits}
    f.update(n=m, wbits=8, bias=0, arow=0, wgroup=0, brow=0)
    bufs.gmult = bufs.keyf = None
    act, kv, score, wgt, prm = Buf.ACT, Buf.KV, Buf.SCORE, Buf.WEIGHT, Buf.PARAM
    if func in ("linear", "head"):
        n = int(rng.choice([2, 4, 8, m, 1]))
        k = m * int(rng.integers(1, 5)) - (int(rng.integers(0, 8)) if n == 1 else 0)
        bits = int(rng.choice(hw.weight_bits))
        cols = int(
            rng.integers(1, 3 * eng.chains * eng.chain_length // (m if n in (1, m) else n) + 2)
        )
        bias = int(rng.random() < 0.5)
        nm = (1, 1) if n == 1 else (n, m)  # the compiler writes dense ops as 1:1
        f.update(k=k, n=nm[0], m=nm[1], wbits=bits, bias=bias, cols=cols)
        f.update(arow=int(rng.random() < 0.6))
        # weight groups (whole blocks dividing k) on about half of the ops that allow one
        groups = [g for g in (m, 2 * m, 4 * m) if k % g == 0 and g <= 128]
        group = int(rng.choice(groups)) if groups and rng.random() < 0.5 else None
        f["wgroup"] = 0 if group is None else group.bit_length() - 1
        geo = BeatGeometry.from_preset(hw)
        blob = _tile(rng, cols, k, *nm, bits, bool(bias), geo, group)
        # tiles sit at multiples of ALIGN, as the compiler places them
        b_off = int(rng.integers(0, (bufs.mem[wgt].size - blob.size) // ALIGN)) * ALIGN
        bufs.mem[wgt][b_off : b_off + blob.size] = blob
        if group is not None:  # where the group multipliers sit (a must-fail check's target)
            at = TileSpec.sections(cols, k, *nm, bits, bool(bias), geo, group)
            bufs.gmult = (b_off + at["gmult"], b_off + at["end"])
        f.update(b_buf=wgt, b_off=b_off, b_stride=0)
        a_buf, o_buf = act, act
        guard = int(rng.integers(0, 12))
        bufs.mem[prm][(p := int(rng.integers(0, 1000)) * 4) : p + 4] = np.frombuffer(
            np.int32(guard).tobytes(), np.uint8
        )
        alo = -127
    elif func == "qk":
        k = int(rng.choice([16, 32]))
        cols = int(rng.integers(1, 40))
        # rotated keys (isa v5 brow): each key row's factor before it, the compiler's stride
        # k + 4 (or more), arow 0; mult, shift, guard at p_off
        # (brow's own draws come from _BROW_RNG: with HWFLOW_BROW_P=0 the instruction stream
        # is the one the bench drew before brow existed)
        brow = int(BROW_P > 0 and _BROW_RNG.random() < BROW_P)
        f.update(k=k, cols=cols, arow=0 if brow else int(rng.random() < 0.3), brow=brow)
        pad = 4 * brow
        stride = k + pad + int(rng.integers(0, 8)) * int(rng.random() < 0.5)  # compiler's: k
        b_off = pad + int(rng.integers(0, bufs.mem[kv].size - cols * stride - pad))
        for r in range(cols):
            at = b_off + r * stride
            bufs.mem[kv][at : at + k] = rng.integers(-127, 128, k).astype(np.int8).view(np.uint8)
            if brow:  # (m, e) of a key's INT8 codes: e = 15 - bitlen(M) may be negative
                fac = np.array(
                    [_BROW_RNG.integers(2**14, 2**15), _BROW_RNG.integers(-9, 15)], "<i2"
                )
                bufs.mem[kv][at - 4 : at] = fac.view(np.uint8)
        bufs.keyf = (b_off, stride, cols) if brow else None
        f.update(b_buf=kv, b_off=b_off, b_stride=stride)
        a_buf, o_buf = act, score
        p = int(rng.integers(0, 1000)) * 4
        vals = np.array(
            [rng.integers(1, 2**15), rng.integers(0, 40), _BROW_RNG.integers(0, 30)], "<i4"
        )
        bufs.mem[prm][p : p + 12] = vals.view(np.uint8)
        alo = -127
    else:  # pv
        k = int(rng.integers(0 if empty else 1, 40))
        cols = int(rng.choice([8, 16, 32]))
        f.update(k=k, cols=cols, arow=int(rng.random() < 0.8))
        stride = cols + int(rng.integers(0, 8)) * int(rng.random() < 0.5)  # compiler's: cols
        b_off = int(rng.integers(0, bufs.mem[kv].size - max(k, 1) * stride))
        for r in range(k):
            at = b_off + r * stride
            bufs.mem[kv][at : at + cols] = (
                rng.integers(-127, 128, cols).astype(np.int8).view(np.uint8)
            )
        f.update(b_buf=kv, b_off=b_off, b_stride=stride)
        a_buf, o_buf = score, act
        p = int(rng.integers(0, 1000)) * 4
        vals = np.array([rng.integers(1, 2**15), rng.integers(0, 40), rng.integers(0, 12)], "<i4")
        bufs.mem[prm][p : p + 12] = vals.view(np.uint8)
        alo = 0
    f["p_off"] = p
    if empty and rng.random() < 0.1:
        f["cols"] = 0
    a_stride = k + 4 + int(rng.integers(0, 6))
    a_off = 4 + int(rng.integers(0, 4000))
    dtype = np.int8 if alo < 0 else np.uint8
    _rows_with_factors(
        rng, bufs.mem[a_buf], a_off, a_stride, rows, k, alo, 127 if alo < 0 else 255, dtype
    )
    o_stride = f["cols"] * obits // 8 + int(rng.integers(0, 6))
    o_off = 40000 + int(rng.integers(0, 3000))
    f.update(a_buf=a_buf, a_off=a_off, a_stride=a_stride, o_buf=o_buf, o_off=o_off)
    f.update(o_stride=o_stride)
    return f


def _concrete(f: dict, unit: Unit) -> Concrete:
    """The instruction as funcsim executes it: every field of the unit's command layout (the
    ones the bench does not draw, e.g. ``wgroup``, are 0)."""
    full = dict.fromkeys(cmd_layout(unit).members, 0) | f
    return Concrete(0, "MM" if unit == Unit.MM else "MV", unit, 0, 0, full, 0, ())


def expected(hw: Any, bufs: Buffers, f: dict, unit: Unit) -> dict[Buf, np.ndarray]:
    """The buffers after funcsim executes ``f`` on a copy of the current contents."""
    fs = FuncSim.on_buffers(hw, {b: v.copy() for b, v in bufs.mem.items()})
    fs.execute(_concrete(f, unit))
    return fs.bufs


def _gmult_matters(hw: Any, bufs: Buffers, f: dict, unit: Unit, want: dict) -> bool:
    """Whether changing the instruction's group multipliers (each byte xor 0x55) changes
    funcsim's result (not every change shows through saturation): the must-fail check
    flips them only where it does."""
    span = slice(*bufs.gmult)
    bufs.mem[Buf.WEIGHT][span] ^= 0x55
    other = expected(hw, bufs, f, unit)
    bufs.mem[Buf.WEIGHT][span] ^= 0x55
    o = Buf(f["o_buf"])
    return not np.array_equal(other[o], want[o])


def _flip_keyf(bufs: Buffers) -> None:
    """xor 3 into every key factor's low exponent byte (its own inverse)."""
    off, stride, keys = bufs.keyf
    for j in range(keys):
        bufs.mem[Buf.KV][off + j * stride - 2] ^= 3


def _keyf_matters(hw: Any, bufs: Buffers, f: dict, unit: Unit, want: dict) -> bool:
    """Whether changed key factors change funcsim's result (the must-fail check flips them
    only where they do)."""
    _flip_keyf(bufs)
    other = expected(hw, bufs, f, unit)
    _flip_keyf(bufs)
    o = Buf(f["o_buf"])
    return not np.array_equal(other[o], want[o])


async def run_instr(dut: Any, f: dict, layout: Any) -> tuple[int, int]:
    """Issue one command; (cycle accepted, cycle of done)."""
    await FallingEdge(dut.clk)
    dut.cmd__payload.value = encode(layout, f)
    dut.cmd__valid.value = 1
    cyc = 0
    start = None
    while True:
        await RisingEdge(dut.clk)
        cyc += 1
        if start is None and dut.cmd__ready.value and dut.cmd__valid.value:
            start = cyc
            await FallingEdge(dut.clk)
            dut.cmd__valid.value = 0
        elif start is not None and dut.done.value:
            return start, cyc
        if cyc > 400_000:
            raise AssertionError(f"no done after {cyc} cycles: {f}")


class Phases:
    """Cycles (sampled mid-cycle) of an instruction's phases, for the table: the command
    accepted, the engine's first and last beat, its first and last drained word, ``done``
    (``HWFLOW_PHASES=1``; reads the unit's internal ``take`` / ``o__valid`` / ``o__ready``)."""

    def __init__(self, dut: Any) -> None:
        self.dut = dut
        self.ev: dict[str, list[int]] = {}
        self.cyc = 0

    def clear(self) -> None:
        self.ev = {k: [] for k in ("acc", "beat", "drain", "done")}

    async def watch(self) -> None:
        d = self.dut
        self.clear()
        busy = 0
        while True:
            await FallingEdge(d.clk)
            self.cyc += 1
            if d.busy.value and not busy:  # busy rises the cycle after acceptance
                self.ev["acc"].append(self.cyc - 1)
            busy = int(d.busy.value)
            if d.take.value:
                self.ev["beat"].append(self.cyc)
            if d.o__valid.value and d.o__ready.value:
                self.ev["drain"].append(self.cyc)
            if d.done.value:
                self.ev["done"].append(self.cyc)

    def summary(self) -> dict[str, int]:
        """Cycles after acceptance: first/last beat and drain word, done; beats, words."""
        ev = self.ev
        if not ev.get("acc"):
            return {}
        a = ev["acc"][0]
        out = {"beats": len(ev["beat"]), "words": len(ev["drain"])}
        for k in ("beat", "drain"):
            if ev[k]:
                out[f"{k}0"], out[f"{k}1"] = ev[k][0] - a, ev[k][-1] - a
        if ev["done"]:
            out["done"] = ev["done"][0] - a
        return out


async def _setup(dut: Any, stall: float) -> tuple[Any, str, Unit, Buffers, np.random.Generator]:
    hw = load_hw(os.environ["HWFLOW_PRESET"])
    kind = os.environ["HWFLOW_KIND"]
    unit = Unit.MM if kind == "mpe" else Unit.MV
    rng = np.random.default_rng(int(os.environ.get("HWFLOW_SEED", "7")) + (kind == "mpe"))
    bufs = Buffers(dut, hw, rng, stall)
    for b in Buf:  # garbage everywhere: a read from a wrong place shows
        bufs.mem[b][:] = rng.integers(0, 256, bufs.mem[b].size)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.cmd__valid.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    cocotb.start_soon(bufs.serve())
    if os.environ.get("HWFLOW_PHASES") == "1":
        bufs.phases = Phases(dut)
        cocotb.start_soon(bufs.phases.watch())
    return hw, kind, unit, bufs, rng


async def _run(dut: Any, stall: float, tag: str) -> None:
    hw, kind, unit, bufs, rng = await _setup(dut, stall)
    layout = cmd_layout(unit)
    n_ops = int(os.environ.get("HWFLOW_OPS", "12"))
    corrupt = os.environ.get("HWFLOW_CORRUPT") == "1"
    corrupt_g = os.environ.get("HWFLOW_CORRUPT_GMULT") == "1"
    corrupt_k = os.environ.get("HWFLOW_CORRUPT_KEYF") == "1"
    brow_ok, kflipped = 0, False
    table, bad, funcs_ok = [], [], {f: 0 for f in MATMUL_FUNCS}
    grouped_ok, flipped = 0, False
    cycles, t0 = 0, time.perf_counter()
    for i in range(n_ops):
        func = MATMUL_FUNCS[i % len(MATMUL_FUNCS)]
        f = random_instr(rng, hw, kind, bufs, func, empty=stall > 0)
        want = expected(hw, bufs, f, unit)
        if corrupt and i == 0:  # flip one expected byte the instruction writes
            diff = np.nonzero(want[Buf(f["o_buf"])] != bufs.mem[Buf(f["o_buf"])])[0]
            at = int(diff[0]) if diff.size else f["o_off"]
            want[Buf(f["o_buf"])][at] ^= 1
        flip = corrupt_g and bufs.gmult is not None and _gmult_matters(hw, bufs, f, unit, want)
        if flip:  # the RTL reads changed group multipliers, funcsim's expectation does not
            corrupt_g, flipped = False, True
            bufs.mem[Buf.WEIGHT][slice(*bufs.gmult)] ^= 0x55
        kflip = corrupt_k and bufs.keyf is not None and _keyf_matters(hw, bufs, f, unit, want)
        if kflip:  # the RTL reads changed key factors, funcsim's expectation does not
            corrupt_k, kflipped = False, True
            _flip_keyf(bufs)
        phases = getattr(bufs, "phases", None)
        if phases:
            phases.clear()
        start, end = await run_instr(dut, f, layout)
        if flip:
            bufs.mem[Buf.WEIGHT][slice(*bufs.gmult)] ^= 0x55
        if kflip:
            _flip_keyf(bufs)
        cycles += end
        same = all(np.array_equal(want[b], bufs.mem[b]) for b in Buf)
        if not same:
            b = next(b for b in Buf if not np.array_equal(want[b], bufs.mem[b]))
            at = int(np.nonzero(want[b] != bufs.mem[b])[0][0])
            bad.append(f"{func} {f}: {b.name} byte {at} rtl {bufs.mem[b][at]} want {want[b][at]}")
            bufs.mem = {b: v.copy() for b, v in want.items()}  # resync, keep going
        else:
            funcs_ok[func] += 1
            grouped_ok += f["wgroup"] != 0
            brow_ok += f["brow"]
        model = lower(hw, [_concrete(f, unit)])[0][0]  # the cycle model's charge
        table.append(
            {
                "func": func,
                "rows": f["rows"],
                "cols": f["cols"],
                "k": f["k"],
                "n": f["n"],
                "m": f["m"],
                "wbits": f["wbits"],
                "obits": f["obits"],
                "group": 1 << f["wgroup"] if f["wgroup"] else 0,
                "brow": f["brow"],
                "rtl": end - start + 1,  # accepted through done (the machine's count)
                "model_latency": model.latency,
                "model_beats": model.beats,
                "fields": {k: int(v) for k, v in f.items()},
                "port_demand": port_demand(hw, kind, f),
                "phases": phases.summary() if phases else {},
            }
        )
    secs = time.perf_counter() - t0
    _save(**{f"{tag}_table": table, f"{tag}_ok": funcs_ok, f"{tag}_bad": bad[:5]})
    _save(**{f"{tag}_grouped_ok": grouped_ok, f"{tag}_gmult_flipped": flipped})
    _save(**{f"{tag}_brow_ok": brow_ok, f"{tag}_keyf_flipped": kflipped})
    _save(**{f"{tag}_cycles_per_s": cycles / secs if secs else 0.0})
    assert not bad, "\n".join(bad[:5])
    off = _cycle_misses(table)
    assert not off, "\n".join(off)


def _words(addr: int, nbytes: int) -> int:
    """Buffer words covering the bytes [addr, addr + nbytes)."""
    return (addr + nbytes - 1) // _WB - addr // _WB + 1 if nbytes > 0 else 0


def _stream_reads(parts: list[tuple[int, int]]) -> int:
    """Port reads of one operand stream's parts ``(byte addr, bytes)`` in order, as a part
    reader with a one-word cache per stream reads them (hwflow.hw.machine.mmu_read: a part
    reads the words it covers, but not its first word when that is the stream's last read;
    0 bytes: a zero part, no read)."""
    last, reads = None, 0
    for addr, nbytes in parts:
        if nbytes <= 0:
            continue
        w0, w1 = addr // _WB, (addr + nbytes - 1) // _WB
        reads += (w0 != last) + (w1 != w0)
        last = w1
    return reads


def _pv_n(eng: Any, hw: Any, cols: int) -> int:
    """pv's N at ``cols`` columns, from the preset alone (hwflow.costs.pv_nm's rule: the
    smallest N mode whose row group, chains * C / N columns, is no wider than ``cols``)."""
    c, m = eng.chain_length, hw.sparsity.m
    modes = sorted({n for n in hw.sparsity.n_allowed if c % n == 0} | {m})
    return next((n for n in modes if eng.chains * c // n <= cols), modes[-1])


def port_demand(hw: Any, kind: str, f: dict) -> int:
    """Cycles the unit's busiest buffer read port (or part reader: a part a cycle) needs for
    ``f``, counted from the instruction alone as the unit streams its operands (hwflow.hw.machine.mmu_feed): per token
    lane its rows' M-blocks, once per row group; linear/head the tile's records (two parts when
    values and indices exceed a word) and its bias/mult/shift/group sections; qk per beat the
    row group's key rows' M-blocks as one span when it fits a word, else a part per row; pv per
    beat N keys' pieces of the group's V columns as one span when it fits, else a part per
    key. An instruction whose demand exceeds the engine's beats is bound by the buffer ports,
    which the cycle model does not charge."""
    eng = getattr(hw, kind)
    big_m, func = hw.sparsity.m, MATMUL_FUNCS[f["func"]]
    rows, cols, k = f["rows"], f["cols"], f["k"]
    if not (rows and cols and k):
        return 0
    tstep = 1 if func == "pv" and eng.dual_int8 else eng.rows
    lin = func in ("linear", "head")
    n_eff = f["n"] if lin and f["n"] != f["m"] else big_m
    if func == "pv":
        n_eff = _pv_n(eng, hw, cols)
    rpb = eng.chains * eng.chain_length // n_eff
    passes, groups, kp = -(-rows // tstep), -(-cols // rpb), -(-k // big_m) * big_m
    reads: dict[int, int] = {}
    requests = [0]  # the busiest stream's parts: a reader takes at most one a cycle

    def add(buf: int, parts: list[tuple[int, int]]) -> None:
        reads[buf] = reads.get(buf, 0) + _stream_reads(parts)
        requests.append(len(parts))

    for t in range(min(tstep, rows)):
        parts = []
        for tb in range(0, rows, tstep):
            if tb + t >= rows or (func == "pv" and eng.dual_int8 and t):
                continue
            at = f["a_off"] + (tb + t) * f["a_stride"]
            parts += [(at + i, big_m) for _ in range(groups) for i in range(0, kp, big_m)]
        add(f["a_buf"], parts)
    b_off, b_stride, b = f["b_off"], f["b_stride"], f["b_buf"]
    if lin:
        geo = BeatGeometry.from_preset(hw)
        sec = TileSpec.sections(cols, k, f["n"], f["m"], f["wbits"], bool(f["bias"]), geo,
                                1 << f["wgroup"] if f["wgroup"] else None)  # fmt: skip
        rec = sum(geo.record_bytes(f["n"], f["m"], f["wbits"]))
        per_pass = _words(b_off, sec["beats"]) if rec <= _WB else 2 * groups * kp // big_m
        for what, size in (("bias", 4), ("mult", 2), ("shift", 1)):
            if what != "bias" or f["bias"]:
                per_pass += _words(b_off + sec[what], groups * rpb * size)
        per_pass += _words(b_off + sec["gmult"], sec["end"] - sec["gmult"])
        reads[b] = reads.get(b, 0) + passes * per_pass
        requests.append(passes * groups * kp // big_m * (1 if rec <= _WB else 2))
    elif func == "qk":
        nb = eng.chains * eng.chain_length // big_m
        span = (nb - 1) * b_stride + big_m
        for lane in range(1 if span <= _WB else nb):
            parts = []
            for _ in range(passes):
                for gb in range(0, cols, nb):
                    rows_at = [gb] if span <= _WB else [gb + lane]
                    size = span if span <= _WB else big_m
                    parts += [(b_off + r * b_stride + i, size if r < cols else 0)
                              for r in rows_at for i in range(0, kp, big_m)]  # fmt: skip
            add(b, parts)
    else:
        span = (n_eff - 1) * b_stride + rpb
        parts = []
        for _ in range(passes):
            for gb in range(0, cols, rpb):
                for key in range(0, k, n_eff):
                    if span <= _WB:
                        parts.append((b_off + key * b_stride + gb, span))
                    else:
                        parts += [(b_off + (key + j) * b_stride + gb, rpb if key + j < k else 0)
                                  for j in range(n_eff)]  # fmt: skip
        add(b, parts)
    return max(*reads.values(), *requests)


def _cycle_misses(table: list[dict]) -> list[str]:
    """Instructions whose busy cycles miss the model's latency (times ``HWFLOW_CYCLE_SKEW``,
    a must-fail check's wrong expectation) by more than ``HWFLOW_CYCLE_TOL`` (relative;
    unset: no check). A port-bound instruction (:func:`port_demand` above the model's beats)
    must not be faster than the model, and is otherwise reported, not checked."""
    tol = os.environ.get("HWFLOW_CYCLE_TOL")
    if tol is None:
        return []
    skew = float(os.environ.get("HWFLOW_CYCLE_SKEW", "1"))
    out = []
    for r in table:
        want = r["model_latency"] * skew
        if not want:
            continue
        bound = r["port_demand"] > r["model_beats"]
        if r["rtl"] < want * (1 - float(tol)) or (not bound and r["rtl"] > want * (1 + float(tol))):
            out.append(f"{r}: rtl {r['rtl']} cycles, expected {want:.1f}")
    return out


@cocotb.test()
async def random_ops(dut: Any) -> None:
    """Random instructions of every func under random grant stalls, bytes vs funcsim."""
    await _run(dut, 0.25, "random_ops")


@cocotb.test()
async def cost_table(dut: Any) -> None:
    """Random instructions with work (no empty extents), every request granted at once:
    busy cycles next to the cycle model's."""
    await _run(dut, 0.0, "cost_table")
