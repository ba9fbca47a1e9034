"""cocotb bench of the special-function unit (``hwflow.hw.machine.sfu``), run on Verilator.

Scoreboard: the *driver* issues random SFU instructions (every function; random rows and
columns including 0 extents, odd widths, unaligned offsets and strides, every softmax mask,
LayerNorm and RMSNorm) on the ``cmd`` stream; a Python *model of the five buffers* serves the
unit's read and write ports (1-cycle reads, strobed writes, random grants); the *reference*
is the functional simulator's own SFU executor (``FuncSim._sfu``, i.e. hwflow.numerics) run
on a copy of the same buffers; the *checker* compares every byte of every buffer after each
instruction. Cycles: each instruction's busy time (command accepted to ``done``) beside
:func:`hwflow.costs.sfu_cost`, as a table per function.

The bench core is independent of the simulator: :class:`Io` adapters exist for cocotb
(Verilator) and for Amaranth's Python simulator (quick checks without a build).

``HWFLOW_CORRUPT=1`` flips one expected byte: the run must then fail (tested).
"""

from __future__ import annotations

import inspect
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hwflow.config import HardwarePreset, load_hw
from hwflow.costs import sfu_op_cost, sfu_shared_port
from hwflow.funcsim import FuncSim
from hwflow.hw.cosim import save_bench_stats
from hwflow.hw.machine.decode import cmd_layout
from hwflow.hw.machine.sfu import FUNCS
from hwflow.isa import ROW_FACTOR_BYTES, SFU_FORMATS, SFU_FUNCS, Buf, Concrete, Unit
from hwflow.numerics import hadamard_int, quant_rows, requantize, rope_int

#: The RoPE-like functions (aux = head_dim, cos/sin rows at b)
ROPES = ("rope", "ropeq", "ropek")
#: The rotated-keys functions (issue 14) the bench also draws
ROT_FUNCS = ("ropeq", "ropek")
#: funcsim executes ropeq / ropek (rotk's branch): the bench then checks it equals
#: :func:`rot_reference`
FUNCSIM_ROT = "ropeq" in inspect.getsource(FuncSim._sfu)

_STATS: dict[str, Any] = {}


def _save_stats(**kv: Any) -> None:
    _STATS.update(kv)
    save_bench_stats(_STATS)


@dataclass
class Io:
    """Simulator access by flattened port name (``rd_act__en``): get, set, one clock, and
    ``settle`` (let values just set propagate through the unit's combinational paths)."""

    get: Callable[[str], int]
    set: Callable[[str, int], None]
    tick: Callable[[], Awaitable[None]]
    settle: Callable[[], Awaitable[None]]


# ---------------------------------------------------------------------------- instructions
def _fields(**kw: int) -> dict[str, int]:
    base = {name: 0 for name in cmd_layout(Unit.SFU).members}
    base.update(kw)
    return base


class _Alloc:
    """Disjoint byte regions per buffer, at unaligned offsets."""

    def __init__(self, rng: np.random.Generator, sizes: dict[Buf, int]) -> None:
        self.rng, self.sizes = rng, sizes
        self.at = {b: int(rng.integers(4, 70)) for b in Buf}

    def take(self, buf: Buf, nbytes: int, align: int = 1) -> int:
        off = self.at[buf] + 4 + int(self.rng.integers(0, 40))
        off = -(-off // align) * align
        self.at[buf] = off + nbytes
        if self.at[buf] > self.sizes[buf]:
            raise ValueError("region beyond the buffer")
        return off


def _operand(rng, alloc, bufs, rows, width, pad=0, choices=(Buf.ACT, Buf.SCORE, Buf.KV), align=1):
    """A random row-strided operand region: (buf, off, stride); ``align``: offset and stride
    multiples of it (the compiler's layout of input rows)."""
    buf = Buf(int(rng.choice([int(b) for b in choices])))
    stride = -(-(width + pad + int(rng.integers(0, 24))) // align) * align
    off = alloc.take(buf, max(rows, 1) * max(stride, 1) + pad, align)
    return buf, off, stride


def _put(bufs: dict[Buf, np.ndarray], buf: Buf, off: int, stride: int, rows: np.ndarray) -> None:
    """Write [rows, bytes] at a row-strided region."""
    if rows.size == 0:
        return
    raw = np.ascontiguousarray(rows).view(np.uint8).reshape(rows.shape[0], -1)
    for i, r in enumerate(raw):
        bufs[buf][off + i * stride : off + i * stride + r.size] = r


def random_instr(
    rng: np.random.Generator,
    hw: HardwarePreset,
    func: str,
    bufs: dict[Buf, np.ndarray],
    shape: dict[str, int] | None = None,
) -> dict[str, int]:
    """Fields of one random ``func`` instruction; writes its operands into ``bufs``.
    ``shape`` fixes some fields (rows, cols, aux; softmax: mask) instead of drawing them."""
    sizes = {b: bufs[b].size for b in Buf}
    alloc = _Alloc(rng, sizes)
    fmt = SFU_FORMATS[func]
    shape = shape or {}
    rows = int(rng.choice([0, 1, 1, 2, 3, 4])) if rng.random() > 0.1 else 0
    cols = int(rng.choice([0, 1, 2, 3, 5, 7, 8, 13, 16, 31, 33, 64, 97]))
    rows, cols = shape.get("rows", rows), shape.get("cols", cols)
    aux, extra = 0, {}
    if func in ROPES:
        aux = int(rng.choice([2, 4, 8, 16, 32]))
        cols = aux * int(rng.integers(0, 4))
        aux, cols = shape.get("aux", aux), shape.get("cols", cols)
    al = shape.get("align", 1)
    a = _operand(rng, alloc, bufs, rows, cols * fmt.a, align=al)
    # ropek: per head segment its factor then its codes (o_off at head 0's codes)
    hf = ROW_FACTOR_BYTES * (fmt.row_factor or fmt.head_factor)
    ow = cols * fmt.o + (cols // max(aux, 1)) * ROW_FACTOR_BYTES * fmt.head_factor
    o = _operand(rng, alloc, bufs, rows, ow, hf)
    o = (o[0], o[1] + hf, o[2])
    b = (0, 0, 0)
    if func in ("add", "mul"):
        b = _operand(rng, alloc, bufs, rows, cols * fmt.b, align=al)
    if func in ("ropeq", "ropek"):  # INT16 heads, the extremes now and then
        x = rng.integers(-(1 << 15), 1 << 15, size=(max(rows, 1), max(cols, 1)))
        x[rng.random(x.shape) < 0.05] = -(1 << 15)
        _put(bufs, a[0], a[1], a[2], x.astype("<i2")[:rows, :cols])
    if func in ROPES:
        b = _operand(rng, alloc, bufs, rows, aux * 2, align=al)
        cs = rng.integers(-(1 << 14), (1 << 14) + 1, size=(max(rows, 1), aux)).astype("<i2")
        _put(bufs, b[0], b[1], b[2], cs[:rows])
    n = max(rows, 1) * max(cols, 1)
    if func == "softmax":
        spread = int(rng.choice([300, 3000, 1 << 20, 1 << 31]))
        z = rng.integers(-spread, spread, size=n).clip(-(1 << 31), (1 << 31) - 1)
        _put(bufs, a[0], a[1], a[2], z.astype("<i4").reshape(max(rows, 1), -1)[:rows])
        extra = {"mask": int(rng.integers(0, 3)), "qpos": int(rng.integers(0, 70))}
        extra["mask"] = shape.get("mask", extra["mask"])
        extra.update(blk=int(rng.integers(1, 9)), local=int(rng.integers(1, 4)))
        extra["glob"] = int(rng.integers(0, 3))
    p_off = alloc.take(Buf.PARAM, 4 + 2 * max(cols, 1))
    if func == "norm":
        aux = shape.get("aux", int(rng.integers(0, 2)))
        pre = np.array([rng.integers(0, 14)], "<i4").view(np.uint8)
        gam = rng.integers(-(1 << 15), 1 << 15, size=cols).astype("<i2").view(np.uint8)
        bufs[Buf.PARAM][p_off : p_off + 4 + gam.size] = np.concatenate([pre, gam])
    if func == "silu":
        ms = np.array([rng.integers(1, 1 << 15), rng.integers(8, 30)], "<i4").view(np.uint8)
        bufs[Buf.PARAM][p_off : p_off + 8] = ms
    if func == "ropeq":  # per head mult, shift (the compiler's: the head's scale)
        heads = cols // max(aux, 1)
        p_off = alloc.take(Buf.PARAM, 8 * max(heads, 1))
        ms = np.stack([rng.integers(1, 1 << 15, heads), rng.integers(12, 30, heads)], axis=1)
        bufs[Buf.PARAM][p_off : p_off + 8 * heads] = ms.astype("<i4").view(np.uint8).ravel()
    return _fields(
        func=SFU_FUNCS.index(func), rows=rows, cols=cols, aux=aux, p_off=p_off,
        a_buf=int(a[0]), a_off=a[1], a_stride=a[2], b_buf=int(b[0]), b_off=b[1],
        b_stride=b[2], o_buf=int(o[0]), o_off=o[1], o_stride=o[2], **extra,
    )  # fmt: skip


def rot_reference(fields: dict[str, int], bufs: dict[Buf, np.ndarray]) -> dict[Buf, np.ndarray]:
    """ropeq / ropek written out from hwflow.numerics alone (the ISA's text: per row and head
    ``hadamard_int(rope_int(a, cos, sin, 16))``, then the head's ``requantize`` or
    ``quant_rows`` with the factor before each head's codes): an expectation independent of
    funcsim's executor, which the bench also checks when funcsim has these functions."""
    out = {b: v.copy() for b, v in bufs.items()}
    f = fields
    rows, cols, hd = f["rows"], f["cols"], f["aux"]
    if not rows or not cols:
        return out

    def rows_of(buf: int, off: int, stride: int, nbytes: int, dtype: str) -> np.ndarray:
        raw = np.stack(
            [bufs[Buf(buf)][off + i * stride : off + i * stride + nbytes] for i in range(rows)]
        )
        return raw.view(dtype).astype(np.int64)

    x = rows_of(f["a_buf"], f["a_off"], f["a_stride"], 2 * cols, "<i2")
    cs = rows_of(f["b_buf"], f["b_off"], f["b_stride"], 2 * hd, "<i2")
    n = cols // hd
    heads = x.reshape(rows, n, hd).transpose(1, 0, 2)
    y = hadamard_int(rope_int(heads, cs[:, : hd // 2], cs[:, hd // 2 :], 16))
    o = out[Buf(f["o_buf"])]
    if SFU_FUNCS[f["func"]] == "ropeq":
        p = bufs[Buf.PARAM][f["p_off"] : f["p_off"] + 8 * n].view("<i4").reshape(n, 2)
        q = requantize(y, p[:, 0, None, None], p[:, 1, None, None], 8)
        for t in range(rows):
            at = f["o_off"] + t * f["o_stride"]
            o[at : at + cols] = q[:, t].reshape(-1).astype(np.int8).view(np.uint8)
        return out
    for t in range(rows):
        for h in range(n):
            q, (m, e) = quant_rows(y[h, t])
            at = f["o_off"] + t * f["o_stride"] + h * (hd + ROW_FACTOR_BYTES)
            fac = (
                np.array([m], "<u2").view(np.uint8).tolist()
                + np.array([e], "<i2").view(np.uint8).tolist()
            )
            o[at - ROW_FACTOR_BYTES : at] = fac
            o[at : at + hd] = q.astype(np.int8).view(np.uint8)
    return out


def reference(
    hw: HardwarePreset, fields: dict[str, int], bufs: dict[Buf, np.ndarray]
) -> dict[Buf, np.ndarray]:
    """The buffers after the functional simulator's SFU executor ran ``fields`` on a copy
    (ropeq / ropek: :func:`rot_reference`, which funcsim must then equal where it has them)."""
    if SFU_FUNCS[fields["func"]] in ("ropeq", "ropek"):
        want = rot_reference(fields, bufs)
        if FUNCSIM_ROT:
            fs = _funcsim_sfu(fields, bufs)
            assert all(np.array_equal(fs[b], want[b]) for b in Buf), "funcsim differs"
        return want
    return _funcsim_sfu(fields, bufs)


def _funcsim_sfu(fields: dict[str, int], bufs: dict[Buf, np.ndarray]) -> dict[Buf, np.ndarray]:
    fs = FuncSim.__new__(FuncSim)  # only the operand access and the SFU semantics are used
    fs.check_hazards = False
    fs.hbm = np.zeros(1, np.uint8)
    fs.bufs = {b: v.copy() for b, v in bufs.items()}
    fs._sfu(Concrete(0, "SFU", Unit.SFU, 0, 0, fields, 0, ()))
    return fs.bufs


# ---------------------------------------------------------------------------- buffer model
class BufferModel:
    """The five on-chip buffers behind the unit's ports: a granted read's word appears in the
    next cycle (read before the same cycle's write), writes obey the byte strobes."""

    def __init__(self, io: Io, bufs: dict[Buf, np.ndarray], wb: int, rng, grant_p: float) -> None:
        self.io, self.bufs, self.wb, self.rng, self.grant_p = io, bufs, wb, rng, grant_p
        self.pending: dict[Buf, int | None] = {b: None for b in Buf}
        self.names = {b: b.name.lower() for b in Buf}

    def _grant(self) -> int:
        return int(self.grant_p >= 1 or self.rng.random() < self.grant_p)

    def cycle(self) -> None:
        """One cycle of every port (call once per clock, outputs already settled)."""
        for b, nm in self.names.items():
            word = self.pending[b]
            if word is not None:
                raw = self.bufs[b][word * self.wb : (word + 1) * self.wb]
                self.io.set(f"rd_{nm}__data", int.from_bytes(raw.tobytes(), "little"))
            self.pending[b] = None
            if self.io.get(f"rd_{nm}__en"):
                g = self._grant()
                self.io.set(f"rd_{nm}__grant", g)
                if g:
                    self.pending[b] = self.io.get(f"rd_{nm}__addr")
            else:
                self.io.set(f"rd_{nm}__grant", 0)
            if self.io.get(f"wr_{nm}__en"):
                g = self._grant()
                self.io.set(f"wr_{nm}__grant", g)
                if g:
                    self._write(b, nm)
            else:
                self.io.set(f"wr_{nm}__grant", 0)

    def _write(self, b: Buf, nm: str) -> None:
        addr = self.io.get(f"wr_{nm}__addr")
        data = self.io.get(f"wr_{nm}__data").to_bytes(self.wb, "little")
        strb = self.io.get(f"wr_{nm}__strb")
        base = addr * self.wb
        if base + self.wb > self.bufs[b].size:
            raise AssertionError(f"write beyond {b.name}: word {addr}")
        for i in range(self.wb):
            if strb >> i & 1:
                self.bufs[b][base + i] = data[i]


# ---------------------------------------------------------------------------- driver
@dataclass
class Result:
    """Per instruction: function, elements, passes, measured busy cycles, cost, equality."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    sim_cycles: int = 0


async def run_one(
    io: Io, model: BufferModel, fields: dict[str, int], cycle0: int, limit: int = 20000
) -> tuple[int, int]:
    """Issue one instruction and serve the ports until ``done``: (busy cycles, cycles run)."""
    payload = cmd_layout(Unit.SFU).const(fields).as_value().value
    io.set("cmd__payload", payload)
    io.set("cmd__valid", 1)
    accepted = None
    for t in range(limit):
        ready = io.get("cmd__ready")
        if accepted is None and ready:
            accepted = t
        elif accepted is not None:
            io.set("cmd__valid", 0)
        model.cycle()
        await io.settle()  # done may follow this cycle's write grant
        if io.get("done"):
            if accepted is None:
                raise AssertionError("done before the command was accepted")
            await io.tick()
            return t - accepted + 1, t + 1  # the machine's count: results after the done cycle
        await io.tick()
    raise AssertionError(f"no done within {limit} cycles: {fields}")


def fresh_buffers(rng: np.random.Generator, hw: HardwarePreset) -> dict[Buf, np.ndarray]:
    """Every buffer of the preset, filled with random bytes."""
    return {b: rng.integers(0, 256, hw.buffers.bytes(b.name.lower()), dtype=np.uint8) for b in Buf}


async def scoreboard(
    io: Io,
    hw: HardwarePreset,
    wb: int,
    count: int,
    seed: int,
    grant_p: float,
    corrupt: bool,
    funcs: tuple[str, ...] = FUNCS,
    shapes: list[tuple[str, dict[str, int]]] | None = None,
) -> Result:
    """``count`` random instructions per function (or one per entry of ``shapes``: function
    and fixed fields), each checked byte for byte."""
    rng = np.random.default_rng(seed)
    bufs = fresh_buffers(rng, hw)
    model = BufferModel(io, bufs, wb, rng, grant_p)
    res = Result()
    plan = shapes if shapes is not None else [(f, {}) for f in funcs for _ in range(count)]
    for func, shape in plan:
        done = 0
        while done < 1:
            fields = random_instr(rng, hw, func, bufs, shape)
            try:
                want = reference(hw, fields, bufs)
            except ValueError:  # a softmax row with every key masked: not a valid program
                continue
            if corrupt and not res.rows and fields["rows"] and fields["cols"]:
                want[Buf(fields["o_buf"])][fields["o_off"]] ^= 1
            busy, ran = await run_one(io, model, fields, res.sim_cycles)
            res.sim_cycles += ran
            diff = [b.name for b in Buf if not np.array_equal(bufs[b], want[b])]
            elements = fields["rows"] * fields["cols"]
            center = bool(fields["aux"] & 1) if func == "norm" else False
            shared = sfu_shared_port(func, fields["a_buf"], fields["b_buf"])
            cost = sfu_op_cost(
                hw, func, fields["rows"], fields["cols"], center, fields["aux"], shared
            ).latency
            res.rows.append(
                {"func": func, "elements": elements, "rows": fields["rows"], "busy": busy,
                 "cost": cost, "equal": not diff, "center": center, "cols": fields["cols"],
                 "mask": fields["mask"], "hd": fields["aux"]}
            )  # fmt: skip
            if diff:
                first = _first_diff(bufs, want, diff[0])
                raise AssertionError(f"{func} {fields}: buffers {diff} differ ({first})")
            done += 1
    return res


def _first_diff(got: dict[Buf, np.ndarray], want: dict[Buf, np.ndarray], name: str) -> str:
    b = Buf[name]
    i = int(np.argmax(got[b] != want[b]))
    return f"{name} byte {i}: got {got[b][i]}, expected {want[b][i]}"


def cycle_table(res: Result, hw: HardwarePreset) -> list[dict[str, Any]]:
    """Per function (norm split into RMS and LayerNorm): instructions with elements, summed
    measured busy cycles and summed sfu_cost latencies, and their relative difference."""
    agg: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in res.rows:
        if not r["elements"]:
            continue
        key = r["func"] + ("/ln" if r["center"] else "")
        a = agg[key]
        a[0] += 1
        a[1] += r["busy"]
        a[2] += r["cost"]
        a[3] += r["rows"]
    return [
        {"func": k, "instrs": a[0], "rows": a[3], "rtl_cycles": a[1], "cost_cycles": a[2],
         "error": (a[1] - a[2]) / a[2]}
        for k, a in sorted(agg.items())
    ]  # fmt: skip


def print_table(table: list[dict[str, Any]]) -> None:
    print(f"{'func':<10} {'instrs':>6} {'rows':>5} {'rtl':>7} {'costs.py':>8} {'error':>7}")
    for t in table:
        print(
            f"{t['func']:<10} {t['instrs']:>6} {t['rows']:>5} {t['rtl_cycles']:>7} "
            f"{t['cost_cycles']:>8} {t['error']:>+7.1%}"
        )


def model_shapes(wb: int) -> list[tuple[str, dict[str, int]]]:
    """The shapes compiled models give the SFU: several row counts and row widths (multiples
    of the lanes), every function, RMSNorm and LayerNorm, no/causal/block softmax masks,
    RoPE heads of 16 and 32; input rows word aligned (``wb``-byte words) as the compiler lays
    them out."""
    out: list[tuple[str, dict[str, int]]] = []
    for rows in (1, 2, 4, 8):
        for cols in (16, 64, 128):
            for func in FUNCS:
                base = {"rows": rows, "cols": cols, "align": wb}
                if func == "rope":
                    out.append((func, {**base, "aux": 16 + 16 * (cols > 64)}))
                elif func == "softmax":
                    out += [(func, {**base, "mask": k}) for k in range(3)]
                elif func == "norm":
                    out += [(func, {**base, "aux": k}) for k in range(2)]
                else:
                    out.append((func, base))
    return out


def cycles_agree(busy: int, cost: int) -> bool:
    """The bench's bound: within 2 % of the cost, or 2 cycles for short instructions (the
    writer's word changes and the softmax factor write's slot, which the cost model does not
    track byte by byte)."""
    return abs(busy - cost) <= max(0.02 * cost, 2)


def print_rows(res: Result) -> None:
    """Every instruction: function, shape, RTL busy cycles, cost, relative error."""
    print(f"{'func':<8} {'rows':>4} {'cols':>4} {'mask':>4} {'rtl':>6} {'cost':>6} {'error':>7}")
    for r in res.rows:
        if r["elements"]:
            name = r["func"] + ("/ln" if r["center"] else "")
            err = (r["busy"] - r["cost"]) / r["cost"]
            print(
                f"{name:<8} {r['rows']:>4} {r['cols']:>4} {r['mask']:>4} {r['busy']:>6} "
                f"{r['cost']:>6} {err:>+7.1%}"
            )


# ---------------------------------------------------------------------------- Amaranth sim
def pysim_scoreboard(
    hw: HardwarePreset,
    wb: int,
    shapes: list[tuple[str, dict[str, int]]],
    seed: int = 1,
    grant_p: float = 0.7,
    corrupt: bool = False,
) -> Result:
    """:func:`scoreboard` on Amaranth's Python simulator (no Verilator build): one
    instruction per entry of ``shapes``."""
    from amaranth.sim import Simulator

    from hwflow.hw.machine.sfu import Sfu

    dut = Sfu(hw, wb)
    out: dict[str, Result] = {}

    def sig(name: str) -> Any:
        obj: Any = dut
        for part in name.split("__"):
            obj = getattr(obj, part)
        return obj.as_value() if hasattr(obj, "as_value") else obj

    async def settle() -> None:  # testbench reads see settled values already
        return None

    async def tb(ctx: Any) -> None:
        io = Io(lambda n: ctx.get(sig(n)), lambda n, v: ctx.set(sig(n), v), ctx.tick, settle)
        out["res"] = await scoreboard(io, hw, wb, 1, seed, grant_p, corrupt, shapes=shapes)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return out["res"]


# ---------------------------------------------------------------------------- cocotb
def _cocotb_io(dut: Any) -> Io:
    from cocotb.triggers import FallingEdge, Timer

    def get(name: str) -> int:
        return int(getattr(dut, name).value)

    def put(name: str, v: int) -> None:
        getattr(dut, name).value = v

    async def tick() -> None:
        await FallingEdge(dut.clk)

    async def settle() -> None:
        await Timer(1, unit="ps")

    return Io(get, put, tick, settle)


async def _start(dut: Any) -> Io:
    from cocotb.clock import Clock
    from cocotb.triggers import FallingEdge

    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.cmd__valid.value = 0
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    await FallingEdge(dut.clk)
    return _cocotb_io(dut)


def _env() -> tuple[HardwarePreset, int]:
    return load_hw(os.environ.get("HWFLOW_PRESET", "tiny")), int(os.environ["HWFLOW_WORD_BYTES"])


try:
    import cocotb

    @cocotb.test()
    async def random_ops(dut: Any) -> None:
        """Random instructions of every function under random grants, byte-exact."""
        hw, wb = _env()
        io = await _start(dut)
        corrupt = os.environ.get("HWFLOW_CORRUPT") == "1"
        res = await scoreboard(
            io, hw, wb, int(os.environ.get("HWFLOW_COUNT", "12")), 1, 0.7, corrupt
        )
        _save_stats(random_ops=len(res.rows), random_equal=sum(r["equal"] for r in res.rows))

    @cocotb.test()
    async def cost_model(dut: Any) -> None:
        """Grants always given: busy cycles per instruction against costs.sfu_cost."""
        hw, wb = _env()
        io = await _start(dut)
        t0 = time.perf_counter()
        res = await scoreboard(io, hw, wb, int(os.environ.get("HWFLOW_COUNT", "12")), 2, 1.0, False)
        secs = time.perf_counter() - t0
        table = cycle_table(res, hw)
        print_table(table)
        _save_stats(cost_table=table, sim_cycles=res.sim_cycles, sim_seconds=secs)

    @cocotb.test()
    async def model_costs(dut: Any) -> None:
        """The model shapes (:func:`model_shapes`): every instruction's busy cycles within
        2 % of costs.sfu_op_cost (``HWFLOW_COST_SKEW`` scales the costs: a must-fail check)."""
        hw, wb = _env()
        io = await _start(dut)
        res = await scoreboard(io, hw, wb, 1, 3, 1.0, False, shapes=model_shapes(wb))
        skew = float(os.environ.get("HWFLOW_COST_SKEW", "0"))
        for r in res.rows:
            r["cost"] = round(r["cost"] * (1 + skew))
        print_rows(res)
        table = cycle_table(res, hw)
        print_table(table)
        off = [r for r in res.rows if r["elements"] and not cycles_agree(r["busy"], r["cost"])]
        worst = max(abs(r["busy"] - r["cost"]) / r["cost"] for r in res.rows if r["elements"])
        _save_stats(model_table=table, model_worst=worst, model_off=len(off))
        assert not off, f"{len(off)} instructions off costs.sfu_op_cost, e.g. {off[0]}"
except ImportError:  # pragma: no cover - the bench is imported outside cocotb (pysim use)
    pass
