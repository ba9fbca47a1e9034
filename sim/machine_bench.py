"""cocotb bench of the whole machine (``hwflow.hw.machine.top.Accelerator``) on Verilator.

The HBM is ``cocotbext-axi`` RAM models on the machine's three AXI4 ports (instruction fetch,
LD, ST), all sharing one byte array preloaded with the case's HBM image (compiled data plus
the ``program`` region). Reads are timed by the preset (:class:`HbmRead`): a burst's first
beat comes ``costs.hbm_latency_cycles`` after its address, or after its channel
(:func:`hwflow.isa.hbm_channel`) finished the previous burst's occupancy
(``costs.hbm_pieces``), whichever is later; later beats follow one per cycle.

The case (``HWFLOW_CASE``, an ``.npz`` written by :mod:`hwflow.hw.machine.run`) holds the HBM
image, the steps (template address, words, LEN, POS, input address, and the input bytes the
host writes there before the step) and the buffers to dump. Per step the
bench starts the machine, waits for ``done`` and records the monitor's per-instruction
(unit, pc, start, end) cycles; it fails on a dispatcher error, a token counter overflow,
tokens left at the end, or a step that does not finish. Results go to ``HWFLOW_OUT``: the HBM
after each step, the buffers after the last, cycles and the instruction records; the caller
(pytest, ``hwflow cosim``) compares them with the functional simulator.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, RisingEdge
from cocotbext.axi import AxiReadBus, AxiWriteBus
from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite
from cocotbext.axi.constants import AxiResp

from hwflow.config import load_hw
from hwflow.costs import hbm_latency_cycles, hbm_pieces
from hwflow.isa import TOKEN_UNITS

PERIOD_NS = 10


class _Clock:
    """Cycle count of the bench clock (from simulation time)."""

    @staticmethod
    def now() -> int:
        return int(cocotb.utils.get_sim_time("ns")) // PERIOD_NS


class HbmRead(AxiRamRead):
    """AxiRamRead with the preset's read timing (module doc); INCR bursts of full beats."""

    def __init__(self, bus: AxiReadBus, clock: object, mem: bytearray, hw: object) -> None:
        super().__init__(bus, clock, mem=mem)
        self.hw = hw
        self.latency = hbm_latency_cycles(hw)
        self.free = [0] * hw.hbm.channels

    async def _process_read(self) -> None:
        """Take every AR as it arrives (stamped with its cycle); serve them in order."""
        pending: list = []
        wake = Event()
        cocotb.start_soon(self._serve(pending, wake))
        while True:
            ar = await self.ar_channel.recv()
            pending.append((ar, _Clock.now()))
            wake.set()

    async def _serve(self, pending: list, wake: Event) -> None:
        while True:
            while not pending:
                wake.clear()
                await wake.wait()
            ar, t = pending.pop(0)
            addr, n = int(ar.araddr), int(ar.arlen) + 1
            nbytes = n * self.byte_lanes
            ready = t + self.latency
            for piece in hbm_pieces(self.hw, addr, nbytes):
                start = max(t, self.free[piece.channel])
                self.free[piece.channel] = start + piece.occupancy
                ready = max(ready, start + self.latency)
            wait = ready - _Clock.now()
            if wait > 0:
                await ClockCycles(self.clock, wait)
            data = bytes(self.mem[addr : addr + nbytes])
            lanes = self.byte_lanes
            for i in range(n):
                r = self.r_channel._transaction_obj()
                r.rid = 0
                r.rlast = i == n - 1
                r.rresp = AxiResp.OKAY
                r.rdata = int.from_bytes(data[i * lanes : (i + 1) * lanes], "little")
                await self.r_channel.send(r)


async def _reset(dut: object) -> None:
    dut.rst.value = 1
    dut.start.value = 0
    dut.dbg_en.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)


async def _monitor(dut: object, log: list) -> None:
    """Per-instruction (unit, pc, start cycle, end cycle) from the machine's monitor ports."""
    open_: dict[int, list] = {u: [] for u in range(len(TOKEN_UNITS))}
    nu = len(TOKEN_UNITS)
    while True:
        await dut.mon_seq.value_change
        cyc = int(dut.cycle.value) - 1  # the events happened in the previous cycle
        st, dn = int(dut.mon_start.value), int(dut.mon_done.value)
        pcs = int(dut.mon_pc.value)
        for u in range(nu):
            if st >> u & 1:
                open_[u].append([u, (pcs >> (16 * u)) & 0xFFFF, cyc, -1])
            if dn >> u & 1:
                rec = open_[u].pop(0)
                rec[3] = cyc
                log.append(rec)


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


@cocotb.test()
async def run_case(dut: object) -> None:
    """Run every step of the case; write the results (module doc)."""
    hw = load_hw(os.environ["HWFLOW_PRESET"])
    case = np.load(os.environ["HWFLOW_CASE"])
    steps = case["steps"].tolist()  # (prog addr, words, LEN, POS, timeout cycles, input addr)
    mem = bytearray(case["hbm"].tobytes())
    cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())
    HbmRead(AxiReadBus.from_prefix(dut, "ifetch_"), dut.clk, mem, hw)
    HbmRead(AxiReadBus.from_prefix(dut, "ld_"), dut.clk, mem, hw)
    AxiRamWrite(AxiWriteBus.from_prefix(dut, "st_"), dut.clk, mem=mem)
    await _reset(dut)
    records: list = []
    cocotb.start_soon(_monitor(dut, records))
    out: dict[str, object] = {}
    stats = []
    wall = time.perf_counter()
    sim0 = _Clock.now()
    for i, (addr, words, length, pos, timeout, in_addr) in enumerate(steps):
        first = len(records)
        if f"in{i}" in case:  # the host writes the step's input rows
            data = case[f"in{i}"].tobytes()
            mem[in_addr : in_addr + len(data)] = data
        dut.prog_addr.value = addr
        dut.prog_words.value = words
        dut.length.value = length
        dut.pos.value = pos
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        t0 = _Clock.now()
        while int(dut.done.value):  # the previous step's done drops once the fetch ends
            await RisingEdge(dut.clk)
            assert _Clock.now() - t0 < timeout, f"step {i}: done never dropped"
        while not int(dut.done.value):
            await ClockCycles(dut.clk, 8)
            assert int(dut.error.value) == 0, f"step {i}: dispatcher error {int(dut.error.value)}"
            assert _Clock.now() - t0 < timeout, (
                f"step {i}: not done after {timeout} cycles; {int(dut.issued.value)} instructions "
                f"dispatched; monitor records {records[first:][:20]}"
            )
        await ClockCycles(dut.clk, 2)
        assert not int(dut.tok_overflow.value), f"step {i}: a token counter overflowed"
        assert not int(dut.tok_left.value), f"step {i}: tokens left in the counters at the end"
        stats.append(
            {
                "cycles": max((r[3] for r in records[first:]), default=0) + 1,
                "fetch_cycles": int(dut.fetch_cycles.value),
                "issued": int(dut.issued.value),
                "absent_used": int(dut.absent_used.value),
                "records": records[first:],
            }
        )
        out[f"hbm{i}"] = np.frombuffer(bytes(mem), np.uint8)
    sim_cycles = _Clock.now() - sim0
    seconds = time.perf_counter() - wall
    wb = hw.hbm.port_bits // 8
    for b, nwords in case["dump"].tolist():
        out[f"buf{b}"] = np.frombuffer(await _dump(dut, b, nwords, wb), np.uint8)
    out["stats"] = np.frombuffer(
        json.dumps({"steps": stats, "sim_cycles": sim_cycles, "sim_seconds": seconds}).encode(),
        np.uint8,
    )
    np.savez(os.environ["HWFLOW_OUT"], **out)
