"""cocotb bench of the whole machine on its simulated HBM (``hwflow.hw.machine.hbm_sim.SimTop``)
on Verilator.

The HBM, its AXI subordinates and their timing are in the simulated design
(:class:`~hwflow.hw.machine.hbm_sim.HbmModel`: the preset's ``costs.hbm_pieces`` occupancies
per channel and ``costs.hbm_latency_cycles``), so Python does not run every cycle: the bench
loads the case's HBM image through the model's host port, and per step writes the step's input
bytes, starts the machine, waits for ``done`` (an edge trigger, raced against a timer and the
dispatcher's ``error``), and reads the image back. The bench imports nothing of hwflow (the
runner passes the monitor's unit order in ``HWFLOW_UNITS``) and runs without cocotb's pytest
assertion rewriting (its asserts carry their messages): both only slowed its start. A monitor coroutine wakes only when the
machine's ``mon_seq`` changes (an instruction started or finished) and records per-instruction
(unit, pc, start, end) cycles and, for LD/ST, how long the transfer queued for its first HBM
channel (:mod:`hwflow.hw.machine.hbm_sim`).

The case (``HWFLOW_CASE``, an ``.npz`` written by :mod:`hwflow.hw.machine.run`) holds the HBM
image, the steps (template address, words, LEN, POS, timeout, input address; the input bytes)
and the buffers to dump. The bench fails on a dispatcher error, a token counter overflow,
tokens left at the end, or a step that does not finish. Results go to ``HWFLOW_OUT``: the HBM
after each step, the buffers after the last, cycles and the instruction records.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer

PERIOD_NS = 10
#: cocotb's clock implementation (``HWFLOW_CLOCK=py``: the Python coroutine, to compare)
CLOCK_IMPL = os.environ.get("HWFLOW_CLOCK", "gpi")


def _now() -> int:
    """Cycles since the simulation started (from simulation time)."""
    return int(cocotb.utils.get_sim_time("ns")) // PERIOD_NS


async def _reset(dut: object) -> None:
    dut.rst.value = 1
    dut.start.value = 0
    dut.dbg_en.value = 0
    dut.host_we.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)


def _unit_names() -> list[str]:
    """The monitor's bit order (``hwflow.isa.TOKEN_UNITS``), as the runner passes it."""
    names = os.environ.get("HWFLOW_UNITS")
    if names is None:  # run by hand: ask the ISA (a slower start)
        from hwflow.isa import TOKEN_UNITS

        return [u.name for u in TOKEN_UNITS]
    return names.split(",")


async def _monitor(dut: object, log: list) -> None:
    """Per-instruction (unit, pc, start cycle, end cycle, channel wait) from the machine's
    monitor ports. The channel wait (LD/ST; 0 for the rest) is the HBM model's
    ``chan_<port>_wait`` of the instruction's transfer, 0 when it moved nothing (the port's
    transfer count did not change between its start and its end)."""
    units = _unit_names()
    nu = len(units)
    open_: dict[int, list] = {u: [] for u in range(nu)}
    ports = {units.index(u): u.lower() for u in ("LD", "ST")}
    chan = {u: (getattr(dut, f"chan_{p}_wait"), getattr(dut, f"chan_{p}_count"))
            for u, p in ports.items()}  # fmt: skip
    while True:
        await dut.mon_seq.value_change
        cyc = int(dut.cycle.value) - 1  # the events happened in the previous cycle
        st, dn = int(dut.mon_start.value), int(dut.mon_done.value)
        pcs = int(dut.mon_pc.value)
        for u in range(nu):
            if st >> u & 1:
                count = int(chan[u][1].value) if u in chan else 0
                open_[u].append([u, (pcs >> (16 * u)) & 0xFFFF, cyc, -1, count])
            if dn >> u & 1:  # the oldest open one (an instruction may end as it starts)
                rec = open_[u].pop(0)
                rec[3] = cyc
                moved = u in chan and int(chan[u][1].value) != rec[4]
                rec[4] = int(chan[u][0].value) if moved else 0
                log.append(rec)


async def _host_write(dut: object, mem: bytearray, lo: int, hi: int, wb: int) -> None:
    """Write the words covering bytes [lo, hi) of ``mem`` into the HBM model."""
    dut.host_we.value = 1
    for w in range(lo // wb, -(-hi // wb)):
        dut.host_addr.value = w
        dut.host_wdata.value = int.from_bytes(mem[w * wb : (w + 1) * wb], "little")
        await RisingEdge(dut.clk)
    dut.host_we.value = 0


async def _host_read(dut: object, nbytes: int, wb: int) -> bytes:
    """The first ``nbytes`` of the HBM model (whole words), through the host port."""
    out = bytearray()
    for w in range(-(-nbytes // wb)):
        dut.host_addr.value = w
        await Timer(1, "ns")  # the combinational read settles
        out += int(dut.host_rdata.value).to_bytes(wb, "little")
    return bytes(out[:nbytes])


async def _dump(dut: object, buf: int, words: int, wb: int) -> bytes:
    """Read ``words`` words of buffer ``buf`` through the debug port."""
    out = bytearray()
    dut.dbg_buf.value = buf
    dut.dbg_en.value = 1
    for w in range(words + 1):
        if w < words:
            dut.dbg_addr.value = w
        await RisingEdge(dut.clk)
        if w:
            out += int(dut.dbg_data.value).to_bytes(wb, "little")
    dut.dbg_en.value = 0
    return bytes(out)


async def _run_step(dut: object, i: int, row: list, records: list, first: int) -> None:
    """Start step ``i`` and wait for ``done`` without waking every cycle."""
    addr, words, length, pos, timeout, _in_addr = row
    dut.prog_addr.value = addr
    dut.prog_words.value = words
    dut.length.value = length
    dut.pos.value = pos
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    t0 = _now()
    await ClockCycles(dut.clk, 2)  # done drops in the cycle after start (fetching)
    limit = Timer(timeout * PERIOD_NS, "ns")
    while not int(dut.done.value):
        got = await First(RisingEdge(dut.done), dut.error.value_change, limit)
        assert int(dut.error.value) == 0, f"step {i}: dispatcher error {int(dut.error.value)}"
        assert got is not limit and _now() - t0 < timeout, (
            f"step {i}: not done after {timeout} cycles; {int(dut.issued.value)} instructions "
            f"dispatched; monitor records {records[first:][:20]}"
        )
    await ClockCycles(dut.clk, 2)
    assert not int(dut.tok_overflow.value), f"step {i}: a token counter overflowed"
    assert not int(dut.tok_left.value), f"step {i}: tokens left in the counters at the end"


@cocotb.test()
async def run_case(dut: object) -> None:
    """Run every step of the case; write the results (module doc)."""
    case = np.load(os.environ["HWFLOW_CASE"])
    steps = case["steps"].tolist()  # (prog addr, words, LEN, POS, timeout cycles, input addr)
    mem = bytearray(case["hbm"].tobytes())
    wb = len(dut.host_wdata) // 8
    # the clock toggled by the simulator interface in C++ ("gpi"), not by a Python coroutine
    # waking twice a cycle (cocotb's default without COCOTB_TRUST_INERTIAL_WRITES)
    clock = Clock(dut.clk, PERIOD_NS, unit="ns", impl=CLOCK_IMPL)
    clock.start()
    await _reset(dut)
    await _host_write(dut, mem, 0, len(mem), wb)
    records: list = []
    cocotb.start_soon(_monitor(dut, records))
    out: dict[str, object] = {}
    stats = []
    wall, cpu = time.perf_counter(), time.process_time()
    sim0 = _now()
    host_s = 0.0  # wall seconds of the host's image reads and input writes between steps
    for i, row in enumerate(steps):
        first = len(records)
        t_io = time.perf_counter()
        if f"in{i}" in case:  # the host writes the step's input rows
            data = case[f"in{i}"].tobytes()
            lo = row[5]
            mem[lo : lo + len(data)] = data
            await _host_write(dut, mem, lo, lo + len(data), wb)
        host_s += time.perf_counter() - t_io
        await _run_step(dut, i, row, records, first)
        stats.append(
            {
                "cycles": max((r[3] for r in records[first:]), default=0) + 1,
                "fetch_cycles": int(dut.fetch_cycles.value),
                "issued": int(dut.issued.value),
                "absent_used": int(dut.absent_used.value),
                "records": records[first:],
            }
        )
        t_io = time.perf_counter()
        img = await _host_read(dut, len(mem), wb)
        host_s += time.perf_counter() - t_io
        mem[:] = img
        out[f"hbm{i}"] = np.frombuffer(img, np.uint8)
    sim_cycles = _now() - sim0
    seconds = time.perf_counter() - wall
    cpu_seconds = time.process_time() - cpu  # Verilator and Python: this process's CPU time
    for b, nwords in case["dump"].tolist():
        out[f"buf{b}"] = np.frombuffer(await _dump(dut, b, nwords, wb), np.uint8)
    out["stats"] = np.frombuffer(
        json.dumps(
            {
                "steps": stats,
                "sim_cycles": sim_cycles,
                "sim_seconds": seconds,
                "sim_cpu_seconds": cpu_seconds,
                "host_seconds": host_s,
            }
        ).encode(),
        np.uint8,
    )
    np.savez(os.environ["HWFLOW_OUT"], **out)
