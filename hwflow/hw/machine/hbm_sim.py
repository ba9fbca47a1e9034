"""A simulation model of the HBM, in the simulated design: a memory preloaded by the host and
three AXI4 subordinates (instruction fetch, LD, ST) timed by the preset (not part of the
accelerator ``hwflow rtl`` writes; :class:`SimTop` wraps the two for ``hwflow cosim``).

Keeping the memory and its timing in the design lets Verilator run whole steps without the
cocotb side waking every cycle (the bench only loads the image, starts a step, waits for
``done`` and reads the image back through the host port).

Timing, in arrival order over the LD and ST ports, whose channels are shared (fetch, before a
step, has its own), what :func:`hwflow.costs.hbm_pieces` charges, the same rule the cycle
model's channels follow, :class:`hwflow.perf.hbm.HbmChannels`: a burst arriving
in cycle ``t`` splits into per-channel pieces; piece p starts at ``max(t, free[channel])`` and
holds its channel for its occupancy; the burst's data is on chip ``hbm_latency_cycles`` after
its latest piece ended (the model's completion), so a read burst's beats come one per cycle
ending then (the first no earlier than ``t`` + latency), and a write burst's response is due
then, and never before the cycle after its last data beat. A burst is charged for the
HBM atoms its bytes cover (its exact first byte is ``araddr``/``awaddr``, its last one and the
hop flag come in AxUSER, :func:`hwflow.hw.machine.axi.user_bits`); every burst of a transfer
is charged from its first burst's arrival (the one port stands for one per channel: the cycle
model hands a transfer's pieces to all its channels at once). The occupancies are a
table computed from ``hbm_pieces`` for every atom start in one interleave period, every
length up to a burst and both hop flags (one definition).

For the monitor, each of the LD and ST ports reports how long the latest transfer's first
piece queued behind other transfers before it held a channel (``chan_<port>_wait``: from the
arrival of the transfer's first burst to the earliest start of any of its pieces) and counts
its transfers (``chan_<port>_count``). The cycle model counts that queueing as the unit's
stall, not its busy time (:mod:`hwflow.perf.machine`), and so does
:func:`hwflow.hw.machine.cycles.class_table`.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hwflow.config import HardwarePreset
from hwflow.costs import HBM_ATOM_BYTES, hbm_latency_cycles, hbm_pieces
from hwflow.hw.machine.axi import AxiRead, AxiWrite
from hwflow.hw.machine.params import MachineParams

__all__ = ["SIM_HBM_BYTES", "HbmModel", "SimTop", "occupancy_table"]

STAMP_BITS = 32  #: cycle stamps (a run is far shorter than 2**32 cycles)
WAIT_BITS = 16  #: the per-port channel wait and transfer count the monitor reads
SIM_HBM_BYTES = 1 << 22  #: the simulated HBM's size (the tiny models' images are ~0.1 MiB)


def occupancy_table(hw: HardwarePreset, mp: MachineParams, write: bool) -> list[list[int]]:
    """Per (hop) x (first atom in the interleave period) x (atoms - 1): each channel's
    occupancy in cycles (0: the burst does not touch it), from :func:`hbm_pieces` of the
    burst's atom-aligned bytes (a burst of ``max_burst_bytes`` covers at most that many)."""
    period = mp.interleave_bytes * mp.channels
    rows = []
    for hop in (False, True):
        for pos in range(period // HBM_ATOM_BYTES):
            for atoms in range(1, _max_atoms(mp) + 1):
                occ = [0] * mp.channels
                a = pos * HBM_ATOM_BYTES
                for p in hbm_pieces(hw, a, atoms * HBM_ATOM_BYTES, hop=hop, write=write):
                    occ[p.channel] = p.occupancy
                rows.append(occ)
    return rows


def _max_atoms(mp: MachineParams) -> int:
    return mp.max_burst_beats * mp.beat_bytes // HBM_ATOM_BYTES


class _Timing:
    """The channel table of one port: ``issue`` computes a burst's start times from ``base``
    (each channel's next free cycle as this port sees it) and leaves the channels' next free
    cycles after it in ``after`` (combinational; the caller chains ports and registers)."""

    def __init__(self, m: Module, hw: HardwarePreset, mp: MachineParams, write: bool, name: str,
                 base: list) -> None:  # fmt: skip
        self.mp, self.base = mp, base
        self.after = [Signal(STAMP_BITS, name=f"{name}_after{c}") for c in range(mp.channels)]
        table = occupancy_table(hw, mp, write)
        ob = self.occ_bits = max(1, max(max(r) for r in table).bit_length())
        # a ROM [(hop * positions + pos) * max_atoms + atoms - 1], channel c at bits c * ob
        packed = [sum(v << (c * ob) for c, v in enumerate(row)) for row in table]
        m.submodules[f"{name}_occ"] = rom = Memory(
            shape=unsigned(ob * mp.channels), depth=len(packed), init=packed
        )
        self.rom = rom.read_port(domain="comb")
        self.m = m
        self.latency = hbm_latency_cycles(hw)
        self.write = write
        self.t0 = Signal(STAMP_BITS, name=f"{name}_t0")  # arrival of the transfer's first burst
        #: cycles from the arrival of the latest transfer's first burst to the first cycle any
        #: of its pieces held a channel (it queued behind other transfers until then), and a
        #: count of transfers (its change tells a command that moved nothing)
        self.wait = Signal(WAIT_BITS, name=f"{name}_wait")
        self.count = Signal(WAIT_BITS, name=f"{name}_count")

    def issue(self, addr: object, blen: object, user: object, stamp: object,
              fire: object) -> Signal:  # fmt: skip
        """When ``fire``: charge the burst (``addr`` its first byte, ``blen`` = beats - 1,
        ``user`` its AxUSER, :func:`hwflow.hw.machine.axi.user_bits`; arrived at ``stamp``);
        returns its due cycle (read: first beat; write: response)."""
        mp, m = self.mp, self.m
        lg = (mp.beat_bytes - 1).bit_length()
        al = (HBM_ATOM_BYTES - 1).bit_length()
        per = mp.interleave_bytes * mp.channels // HBM_ATOM_BYTES
        last = (addr & ~(mp.beat_bytes - 1)) + (blen << lg) + user[:lg]  # the last byte
        more = (last >> al) - (addr >> al)  # atoms - 1
        pos = (addr >> al) & (per - 1)
        m.d.comb += self.rom.addr.eq(((user[lg] * per) + pos) * _max_atoms(mp) + more)
        row = [self.rom.data.word_select(c, self.occ_bits) for c in range(mp.channels)]
        due = Signal(STAMP_BITS + 1, name="due")
        first = user[lg + 1]  # the transfer's first burst: charge the rest from its arrival
        t0 = Mux(first, stamp, self.t0)
        with m.If(fire & first):
            m.d.sync += self.t0.eq(stamp)
        last = t0 + self.latency  # when the last beat (read) / the response (write) is due
        soon = Signal(STAMP_BITS + 1, name="soon")  # this burst's first piece start
        soon_v = Const((1 << STAMP_BITS) - 1, STAMP_BITS + 1)
        for c in range(mp.channels):
            occ = row[c]
            free = self.base[c]
            start = Mux(free > t0, free, t0)
            end = start + occ
            t = end + self.latency
            last = Mux((occ != 0) & (t > last), t, last)
            soon_v = Mux((occ != 0) & (start < soon_v), start, soon_v)
            m.d.comb += self.after[c].eq(Mux(fire & (occ != 0), end, free))
        m.d.comb += soon.eq(soon_v)
        waited = (soon - t0)[:WAIT_BITS]
        with m.If(fire & first):
            m.d.sync += [self.wait.eq(waited), self.count.eq(self.count + 1)]
        with m.Elif(fire & (waited < self.wait)):
            m.d.sync += self.wait.eq(waited)
        if self.write:
            m.d.comb += due.eq(last)
        else:  # the first beat: the burst's beats follow it one per cycle
            beat0 = last - blen
            floor = stamp + self.latency
            m.d.comb += due.eq(Mux(beat0 > floor, beat0, floor))
        return due


class HbmModel(wiring.Component):
    """The HBM model (module doc): ``words`` words of one beat each, AXI ports ``ifetch``,
    ``ld`` (read) and ``st`` (write), and the host's word port (``host_*``: write a word
    with ``host_we``; ``host_rdata`` is the word at ``host_addr``, combinational), and the
    LD/ST ports' channel waits and transfer counts (``chan_*``, module doc)."""

    def __init__(self, hw: HardwarePreset, mp: MachineParams, words: int) -> None:
        self.hw, self.mp, self.words = hw, mp, words
        self.wbits = max(1, (words - 1).bit_length())
        ab, db = mp.axi_addr_bits, mp.axi_data_bits
        super().__init__(
            {
                "ifetch": In(AxiRead(ab, db)),
                "ld": In(AxiRead(ab, db)),
                "st": In(AxiWrite(ab, db)),
                "host_addr": In(self.wbits),
                "host_wdata": In(db),
                "host_we": In(1),
                "host_rdata": Out(db),
                **{f"chan_{k}": Out(WAIT_BITS) for k in _CHAN},
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        mp = self.mp
        m.submodules.mem = mem = Memory(shape=unsigned(mp.axi_data_bits), depth=self.words, init=[])
        now = Signal(STAMP_BITS)
        m.d.sync += now.eq(now + 1)
        host_r = mem.read_port(domain="comb")
        host_w = mem.write_port(granularity=8)
        m.d.comb += [
            host_r.addr.eq(self.host_addr),
            self.host_rdata.eq(host_r.data),
            host_w.addr.eq(self.host_addr),
            host_w.data.eq(self.host_wdata),
            host_w.en.eq(self.host_we.replicate(mp.beat_bytes)),
        ]
        # fetch has channels of its own (it runs before a step); LD and ST share theirs, an LD
        # burst charged before an ST burst arriving in the same cycle
        chans = range(mp.channels)
        free_f = [Signal(STAMP_BITS, name=f"ifetch_free{c}") for c in chans]
        free = [Signal(STAMP_BITS, name=f"free{c}") for c in chans]
        tf = self._reader(m, mem, self.ifetch, now, "ifetch", free_f)
        tl = self._reader(m, mem, self.ld, now, "ld", free)
        ts = self._writer(m, mem, now, tl.after)
        m.d.comb += [
            self.chan_ld_wait.eq(tl.wait),
            self.chan_ld_count.eq(tl.count),
            self.chan_st_wait.eq(ts.wait),
            self.chan_st_count.eq(ts.count),
        ]
        m.d.sync += [free_f[c].eq(tf.after[c]) for c in chans]
        m.d.sync += [free[c].eq(ts.after[c]) for c in chans]
        return m

    def _word(self, addr: object) -> object:
        return (addr >> (self.mp.beat_bytes - 1).bit_length())[: self.wbits]

    def _reader(self, m: Module, mem: Memory, axi: object, now: Signal, name: str,
                base: list) -> _Timing:  # fmt: skip
        """Timing at arrival -> AR queue -> the beats of each burst, back to back once due;
        returns the port's timing (channels seen as ``base``). A burst is charged in the cycle
        its address arrives, so bursts of the LD and ST ports take their channels in arrival
        order (:class:`hwflow.perf.hbm.HbmChannels`), however far behind the data is."""
        mp = self.mp
        ab = mp.axi_addr_bits
        timing = _Timing(m, self.hw, mp, write=False, name=name, base=base)
        fire = axi.arvalid & axi.arready
        due = timing.issue(axi.araddr, axi.arlen, axi.aruser, now, fire)
        m.submodules[f"{name}_arq"] = dq = SyncFIFOBuffered(
            width=ab + 8 + STAMP_BITS + 1, depth=mp.outstanding
        )
        m.d.comb += [
            dq.w_en.eq(axi.arvalid),
            dq.w_data.eq(axi.araddr | (axi.arlen << ab) | (due << (ab + 8))),
            axi.arready.eq(dq.w_rdy),
        ]
        # streaming: ``cur`` word, ``left`` beats after the current one
        rd = mem.read_port(domain="comb")
        active = Signal(name=f"{name}_active")
        cur = Signal(self.wbits, name=f"{name}_cur")
        left = Signal(8, name=f"{name}_left")
        q_addr, q_len, q_due = dq.r_data[:ab], dq.r_data[ab : ab + 8], dq.r_data[ab + 8 :]
        can_load = dq.r_rdy & (q_due <= now + 1)  # the first beat is valid in cycle ``due``
        last_taken = active & axi.rready & (left == 0)
        m.d.comb += [
            rd.addr.eq(cur),
            axi.rdata.eq(rd.data),
            axi.rvalid.eq(active),
            axi.rlast.eq(left == 0),
            axi.rid.eq(0),
            axi.rresp.eq(0),
        ]
        with m.If(active & axi.rready & (left != 0)):
            m.d.sync += [cur.eq(cur + 1), left.eq(left - 1)]
        with m.If(~active | last_taken):
            m.d.comb += dq.r_en.eq(can_load)
            m.d.sync += active.eq(can_load)
            with m.If(can_load):
                m.d.sync += [cur.eq(self._word(q_addr)), left.eq(q_len)]
        return timing

    def _writer(self, m: Module, mem: Memory, now: Signal, base: list) -> _Timing:
        """Timing at arrival -> AW queue; W beats into the memory (strobed); responses when
        due; returns the port's timing (channels seen as ``base``). As for reads, a burst is
        charged in the cycle its address arrives."""
        mp, axi = self.mp, self.st
        ab = mp.axi_addr_bits
        timing = _Timing(m, self.hw, mp, write=True, name="st", base=base)
        fire = axi.awvalid & axi.awready
        charged = timing.issue(axi.awaddr, axi.awlen, axi.awuser, now, fire)
        # first-word-fall-through queues: the head burst takes its W beats from the cycle
        # after its address, its response is due from the cycle after its last beat
        m.submodules.st_awq = awq = SyncFIFO(width=ab + STAMP_BITS + 1, depth=mp.outstanding)
        m.d.comb += [
            awq.w_data.eq(Cat(axi.awaddr, charged)),
            awq.w_en.eq(axi.awvalid),
            axi.awready.eq(awq.w_rdy),
        ]
        head_addr, head_due = awq.r_data[:ab], awq.r_data[ab:]
        m.submodules.st_bq = bq = SyncFIFO(width=STAMP_BITS + 1, depth=mp.outstanding)
        wr = mem.write_port(granularity=8)
        busy = Signal(name="st_busy")  # taking the W beats of the head burst
        cur = Signal(self.wbits, name="st_cur")
        due = Signal(STAMP_BITS + 1, name="st_due_r")
        take = awq.r_rdy & ~busy
        m.d.comb += awq.r_en.eq(take)
        with m.If(take):
            m.d.sync += [busy.eq(1), cur.eq(self._word(head_addr)), due.eq(head_due)]
        beat = busy & axi.wvalid
        m.d.comb += [
            axi.wready.eq(busy & bq.w_rdy),
            wr.addr.eq(cur),
            wr.data.eq(axi.wdata),
            wr.en.eq(Mux(beat & bq.w_rdy, axi.wstrb, 0)),
        ]
        done_beat = beat & bq.w_rdy & axi.wlast
        with m.If(beat & bq.w_rdy):
            m.d.sync += cur.eq(cur + 1)
        with m.If(done_beat):
            m.d.sync += busy.eq(0)
        m.d.comb += [
            bq.w_en.eq(done_beat),
            bq.w_data.eq(Mux(due > now, due, now + 1)),
        ]
        m.d.comb += [
            axi.bvalid.eq(bq.r_rdy & (bq.r_data <= now)),
            axi.bid.eq(0),
            axi.bresp.eq(0),
            bq.r_en.eq(axi.bvalid & axi.bready),
        ]
        return timing


class SimTop(wiring.Component):
    """The :class:`~hwflow.hw.machine.top.Accelerator` on an :class:`HbmModel` of
    :data:`SIM_HBM_BYTES`: the accelerator's host ports and the model's ``host_*`` ports."""

    def __init__(self, hw: HardwarePreset, mp: MachineParams, units: dict | None) -> None:
        from hwflow.hw.machine.top import Accelerator

        self.acc = Accelerator(mp, units)
        self.hbm = HbmModel(hw, mp, SIM_HBM_BYTES // mp.beat_bytes)
        own = {k: v for k, v in self.acc.signature.members.items() if k not in _AXI}
        host = {k: v for k, v in self.hbm.signature.members.items() if k.startswith(_HBM_OWN)}
        super().__init__({**own, **host})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.acc, m.submodules.hbm = acc, hbm = self.acc, self.hbm
        for k in _AXI:
            wiring.connect(m, getattr(acc, k), getattr(hbm, k))
        for k, member in self.signature.members.items():
            inner = getattr(hbm if k.startswith(_HBM_OWN) else acc, k)
            if member.flow == In:
                m.d.comb += inner.eq(getattr(self, k))
            else:
                m.d.comb += getattr(self, k).eq(inner)
        return m


_AXI = ("ifetch", "ld", "st")
_HBM_OWN = ("host_", "chan_")  #: the model's own ports SimTop brings out
#: the per-port channel-wait outputs (``chan_<port>_wait``, ``chan_<port>_count``)
_CHAN = ("ld_wait", "ld_count", "st_wait", "st_count")
