"""LD and ST: the units moving rows between HBM (an AXI4 manager port each) and the buffers.

An LD/ST command (:func:`hwflow.hw.machine.decode.cmd_layout` of ``Unit.LD``/``Unit.ST``)
moves ``rows`` rows of ``row_bytes`` bytes; row i is at HBM byte ``hbm + i * hbm_stride`` and at
byte ``off + i * stride`` of buffer ``buf`` (:meth:`hwflow.funcsim.FuncSim._exec`, LD/ST).

HBM side, the runs of :func:`hwflow.costs.hbm_runs` (the one definition the cycle model
prices): rows contiguous in HBM (``hbm_stride == row_bytes``, or one row) are one run of
``rows * row_bytes`` bytes, otherwise each row is a run of its own. A run is carried by INCR
bursts of whole beats covering it, split at multiples of ``hbm.max_burst_bytes`` (so no burst
crosses a 4 KiB page or exceeds the preset's burst); up to ``hbm.outstanding`` bursts are in
flight. Each burst names its exact bytes (unaligned ``araddr``/``awaddr`` and the user sideband,
:mod:`hwflow.hw.machine.axi`).

Buffer side, row by row: a :class:`~hwflow.hw.machine.realign.Realign` shifts each row between
beat and word alignment, and byte enables (buffer write strobes, AXI ``wstrb``) confine the
writes to the row's bytes. Inside a run, consecutive rows may share a beat: LD replays the
shared beat to the next row, ST merges the rows' parts of a shared beat into one W beat.

``done`` pulses once per command, in the cycle its last buffer word is written (LD) or its last
write response arrives (ST), an empty command (no rows or no bytes) in the cycle after it was
accepted (never in the accepting cycle: the front end's release FIFO takes the command's mask
then). One command runs at a time; its first burst goes out in the cycle after it was
accepted (the stages :data:`hwflow.costs.LDST_REQUEST_STAGES` and ``LD/ST_DONE_STAGES`` count).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from hwflow.hw.machine.axi import AXI_INCR, AxiRead, AxiWrite
from hwflow.hw.machine.bus import ReadPort, WritePort
from hwflow.hw.machine.decode import cmd_layout
from hwflow.hw.machine.params import MachineParams
from hwflow.hw.machine.realign import LEN_BITS, Realign
from hwflow.isa import Buf, Unit

__all__ = ["LoadUnit", "StoreUnit"]


class _Rows:
    """Walks the rows (or runs) of a command: ``addr`` (byte address of the current one),
    ``left``."""

    def __init__(self, m: Module, bits: int, name: str) -> None:
        self.m = m
        self.addr = Signal(bits, name=f"{name}_addr")
        self.left = Signal(17, name=f"{name}_left")

    def start(self, addr: object, rows: object) -> None:
        self.m.d.sync += [self.addr.eq(addr), self.left.eq(rows)]

    def next(self, stride: object) -> None:
        self.m.d.sync += [self.addr.eq(self.addr + stride), self.left.eq(self.left - 1)]


class _Geometry:
    """A command's run structure, registered when it is accepted: ``merged`` (its rows are one
    HBM run), ``run`` (bytes per run), ``runs`` (how many) and ``hop`` (per-row runs shorter
    than an interleave granule: each opens a new DRAM row, :func:`hwflow.costs.hbm_runs`)."""

    def __init__(self, m: Module, mp: MachineParams, name: str) -> None:
        self.m, self.mp = m, mp
        self.merged = Signal(name=f"{name}_merged")
        self.run = Signal(mp.axi_addr_bits, name=f"{name}_run")
        self.runs = Signal(17, name=f"{name}_runs")
        self.hop = Signal(name=f"{name}_hop")
        self.n = Signal(LEN_BITS, name=f"{name}_n")  # bytes per row of the buffer-side walk

    def load(self, p: object) -> tuple[object, object, object, object]:
        """Register the geometry of the accepted command ``p``; returns its (runs, bytes per
        run, rows and bytes per row of the buffer-side walk) as values of ``p``. Rows contiguous on both sides
        are one row for the buffer side too (one realignment of the whole span)."""
        merged = (p.rows <= 1) | (p.hbm_stride == p.row_bytes)
        flat = merged & ((p.rows <= 1) | (p.stride == p.row_bytes))
        run = Mux(merged, p.rows * p.row_bytes, p.row_bytes)[: len(self.run)]
        runs = Mux(merged, 1, p.rows)
        self.m.d.sync += [
            self.merged.eq(merged),
            self.run.eq(run),
            self.runs.eq(runs),
            self.hop.eq(~merged & (p.row_bytes < self.mp.interleave_bytes)),
            self.n.eq(Mux(flat, run, p.row_bytes)),
        ]
        return runs, run, Mux(flat, 1, p.rows), Mux(flat, run, p.row_bytes)[:LEN_BITS]


class _Issue:
    """The burst issuer of one command (:func:`_bursts`): the AxADDR/AxLEN/AxUSER values, valid,
    and :meth:`begin` to start it on the command's first run."""

    def __init__(self, m: Module, wb: int, addr: object, blen: object, user: object,
                 valid: Signal, state: tuple[Signal, ...]) -> None:  # fmt: skip
        self.m, self.wb = m, wb
        self.addr, self.blen, self.user, self.valid = addr, blen, user, valid
        self.busy, self.first, self.cur, self.rend, self.end, self.start = state

    def begin(self, addr: object, run: object) -> None:
        """Start on a first run of ``run`` bytes at ``addr`` (from the accepted command, so
        the first burst goes out in the next cycle)."""
        wb = self.wb
        self.m.d.sync += [
            self.busy.eq(1),
            self.first.eq(1),
            self.start.eq(1),
            self.cur.eq(addr & ~(wb - 1)),
            self.rend.eq((addr + run + (wb - 1)) & ~(wb - 1)),
            self.end.eq(addr + run),
        ]


def _bursts(m: Module, mp: MachineParams, runs: _Rows, geo: _Geometry, stride: object,
            fire: object, name: str) -> _Issue:  # fmt: skip
    """The burst issuer of one command's runs (``runs`` walks them, ``geo.run`` bytes each,
    ``stride`` apart), one burst per cycle. ``fire`` is the address channel's handshake.
    Started by :meth:`_Issue.begin` with ``runs`` loaded."""
    wb = mp.beat_bytes
    lg = (wb - 1).bit_length()
    mb = mp.max_burst_beats * wb
    abits = len(runs.addr)
    busy = Signal(name=f"{name}_busy")
    first = Signal(name=f"{name}_first")  # the run's first burst
    cur = Signal(abits, name=f"{name}_cur")  # the burst's first beat
    rend = Signal(abits + 1, name=f"{name}_rend")  # the run's end, rounded up to a beat
    end = Signal(abits + 1, name=f"{name}_end")  # the run's end
    room = mb - (cur & (mb - 1))
    left = rend - cur
    beats = Signal(9, name=f"{name}_beats")
    m.d.comb += beats.eq(Mux(left.as_unsigned() < room, left, room) >> lg)
    bend = cur + (beats << lg)
    last = Mux(bend > end, end, bend) - 1  # the burst's last byte
    valid = Signal(name=f"{name}_valid")
    m.d.comb += valid.eq(busy & (runs.left != 0))
    with m.If(busy):
        with m.If(runs.left == 0):
            m.d.sync += busy.eq(0)
        with m.Elif(fire):
            m.d.sync += [cur.eq(bend), first.eq(0)]
            with m.If(bend == rend):  # the run's last burst: the next run follows at once
                a = runs.addr + stride
                runs.next(stride)
                m.d.sync += [
                    cur.eq(a & ~(wb - 1)),
                    rend.eq((a + geo.run + (wb - 1)) & ~(wb - 1)),
                    end.eq(a + geo.run),
                    first.eq(1),
                ]
    addr = Mux(first, runs.addr, cur)
    start = Signal(name=f"{name}_start")  # the command's first burst
    with m.If(fire):
        m.d.sync += start.eq(0)
    # a hop run opens a DRAM row in each channel it enters: its first burst, and a later one
    # starting a granule (costs.hbm_pieces charges every channel piece of a hop run a row miss)
    lgg = (mp.interleave_bytes - 1).bit_length()
    user = Cat(last[:lg], geo.hop & (first | (cur[:lgg] == 0)), start)
    return _Issue(m, wb, addr, beats - 1, user, valid, (busy, first, cur, rend, end, start))


def _begin(geo: _Geometry, runs: _Rows, iss: _Issue, data: _Rows, p: object) -> tuple:
    """Start the HBM side of the accepted non-empty command ``p`` (LD and ST alike): register
    its geometry, load the burst issuer's run walk ``runs`` and begin its first burst, and load
    the data side's row walk ``data`` (rows of the buffer-side walk, from HBM byte ``p.hbm``).
    Returns the buffer-side walk's rows and bytes per row (values of ``p``)."""
    n_runs, run, rows, n = geo.load(p)
    runs.start(p.hbm, n_runs)
    iss.begin(p.hbm, run)
    data.start(p.hbm, rows)
    return rows, n


class LoadUnit(wiring.Component):
    """LD: HBM -> buffer over an AXI4 read port (see module doc)."""

    def __init__(self, mp: MachineParams) -> None:
        self.mp = mp
        ports = {
            f"wr_{b.name.lower()}": Out(WritePort(mp.addr_bits(b), mp.word_bytes[b])) for b in Buf
        }
        super().__init__(
            {
                "cmd": In(stream.Signature(cmd_layout(Unit.LD))),
                "done": Out(1),
                "busy": Out(1),
                "axi": Out(AxiRead(mp.axi_addr_bits, mp.axi_data_bits)),
                **ports,
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        mp = self.mp
        wb = mp.beat_bytes
        lg = (wb - 1).bit_length()
        m.submodules.align = al = Realign(wb, max(mp.addr_bits(b) for b in Buf))
        c = Signal(cmd_layout(Unit.LD))
        running = Signal()
        geo = _Geometry(m, mp, "ld")
        ar = _Rows(m, mp.axi_addr_bits, "ar")
        rx_a = _Rows(m, mp.axi_addr_bits, "rxa")  # the receiver's own row walk (HBM side)
        rx_b = Signal(LEN_BITS, name="rx_b")  # ... and its buffer byte address
        rx_busy = Signal()
        rx_next = Signal()  # a row was loaded: the next one may share its last beat
        replay = Signal()  # the row's first beat is the previous row's last (held in ``beat``)
        beat = Signal(8 * wb)
        fire = self.axi.arvalid & self.axi.arready
        iss = _bursts(m, mp, ar, geo, c.hbm_stride, fire, "ar")
        inflight = Signal(range(mp.outstanding + 1))
        m.d.comb += [
            self.axi.araddr.eq(iss.addr),
            self.axi.arlen.eq(iss.blen),
            self.axi.aruser.eq(iss.user),
            self.axi.arsize.eq(lg),
            self.axi.arburst.eq(AXI_INCR),
            self.axi.arvalid.eq(iss.valid & (inflight < mp.outstanding)),
        ]
        rlast = self.axi.rvalid & self.axi.rready & self.axi.rlast
        m.d.sync += inflight.eq(inflight + fire - rlast)
        m.d.comb += self.cmd.ready.eq(~running)
        m.d.comb += self.busy.eq(running)
        accept = self.cmd.valid & self.cmd.ready
        empty = (self.cmd.payload.rows == 0) | (self.cmd.payload.row_bytes == 0)
        with m.If(accept):
            p = self.cmd.payload
            m.d.sync += [c.eq(p), running.eq(1)]
            with m.If(~empty):
                _begin(geo, ar, iss, rx_a, p)
                m.d.sync += [rx_b.eq(p.off), rx_busy.eq(1), rx_next.eq(0)]
        # receiver: one row at a time through the realigner into the buffer
        with m.If(rx_busy & al.idle):
            with m.If(rx_a.left == 0):
                m.d.sync += rx_busy.eq(0)
            with m.Else():
                m.d.comb += [
                    al.load.eq(1),
                    al.s_in.eq(rx_a.addr[:lg]),
                    al.s_out.eq(rx_b[:lg]),
                    al.n.eq(geo.n),
                    al.base.eq(rx_b >> lg),
                ]
                m.d.sync += [
                    rx_b.eq(rx_b + c.stride),
                    rx_next.eq(1),
                    replay.eq(geo.merged & rx_next & (rx_a.addr[:lg] != 0)),
                ]
                rx_a.next(c.hbm_stride)
        m.d.comb += [
            al.i_data.eq(Mux(replay, beat, self.axi.rdata)),
            al.i_valid.eq(replay | self.axi.rvalid),
            self.axi.rready.eq(al.i_ready & ~replay),
        ]
        with m.If(al.i_valid & al.i_ready):
            m.d.sync += beat.eq(al.i_data)
            with m.If(replay & ~al.load):  # (a load in this cycle sets the next row's)
                m.d.sync += replay.eq(0)
        self._buffer_writes(m, c, al)
        # done in the cycle of the last buffer write (or the cycle after an empty command)
        idle = ~iss.busy & (inflight == 0) & ~replay & (rx_a.left == 0) & al.empty
        m.d.comb += self.done.eq(running & idle & (~al.o_valid | al.o_ready))
        with m.If(self.done):
            m.d.sync += running.eq(0)
        return m

    def _buffer_writes(self, m: Module, c: Signal, al: Realign) -> None:
        """The realigner's words go to the command's buffer (its write port's grant)."""
        grant = 0
        for b in Buf:
            port = getattr(self, f"wr_{b.name.lower()}")
            sel = c.buf == b
            m.d.comb += [
                port.addr.eq(al.o_addr),
                port.data.eq(al.o_data),
                port.strb.eq(al.o_strb),
                port.en.eq(al.o_valid & sel),
            ]
            grant = grant | (port.grant & sel)
        m.d.comb += al.o_ready.eq(grant)


class StoreUnit(wiring.Component):
    """ST: buffer -> HBM over an AXI4 write port (see module doc)."""

    def __init__(self, mp: MachineParams) -> None:
        self.mp = mp
        ports = {
            f"rd_{b.name.lower()}": Out(ReadPort(mp.addr_bits(b), mp.word_bytes[b])) for b in Buf
        }
        super().__init__(
            {
                "cmd": In(stream.Signature(cmd_layout(Unit.ST))),
                "done": Out(1),
                "busy": Out(1),
                "axi": Out(AxiWrite(mp.axi_addr_bits, mp.axi_data_bits)),
                **ports,
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        mp = self.mp
        wb = mp.beat_bytes
        m.submodules.align = al = Realign(wb, mp.axi_addr_bits)
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=8 * wb, depth=8)
        c = Signal(cmd_layout(Unit.ST))
        running = Signal()
        geo = self._geo = _Geometry(m, mp, "st")
        aw = _Rows(m, mp.axi_addr_bits, "aw")
        fire = self.axi.awvalid & self.axi.awready
        iss = _bursts(m, mp, aw, geo, c.hbm_stride, fire, "aw")
        pending = self._addresses(m, iss, fire)
        rd = self._reader(m, c, fifo)
        tx_busy, held = self._writer(m, c, al, fifo)
        # commands
        m.d.comb += [self.cmd.ready.eq(~running), self.busy.eq(running)]
        accept = self.cmd.valid & self.cmd.ready
        empty = (self.cmd.payload.rows == 0) | (self.cmd.payload.row_bytes == 0)
        with m.If(accept):
            p = self.cmd.payload
            m.d.sync += [c.eq(p), running.eq(1)]
            with m.If(~empty):
                rows, n = _begin(geo, aw, iss, self._tx, p)
                m.d.sync += [self._tx_b.eq(p.off), tx_busy.eq(1)]
                rd.begin(m, p.off, n, p.stride, rows)
        # done in the cycle the last write response arrives (or after an empty command)
        idle = ~iss.busy & ~rd.busy & ~tx_busy & al.empty & ~al.o_valid & ~held
        idle = idle & ~rd.inflight & ~fifo.r_rdy
        bfire = self.axi.bvalid & self.axi.bready
        last = (pending == 0) | ((pending == 1) & bfire)
        m.d.comb += self.done.eq(running & idle & last)
        with m.If(self.done):
            m.d.sync += running.eq(0)
        return m

    def _addresses(self, m: Module, iss: _Issue, fire: object) -> Signal:
        """The AW channel and the count of bursts whose write response is due."""
        mp, axi = self.mp, self.axi
        pending = Signal(range(mp.outstanding + 1))
        bfire = axi.bvalid & axi.bready
        m.d.comb += [
            axi.awaddr.eq(iss.addr),
            axi.awlen.eq(iss.blen),
            axi.awuser.eq(iss.user),
            axi.awsize.eq((mp.beat_bytes - 1).bit_length()),
            axi.awburst.eq(AXI_INCR),
            axi.awvalid.eq(iss.valid & (pending < mp.outstanding)),
            axi.bready.eq(1),
        ]
        m.d.sync += pending.eq(pending + fire - bfire)
        return pending

    def _reader(self, m: Module, c: Signal, fifo: SyncFIFOBuffered) -> _StoreReader:
        """Buffer reader: the words covering each row, into the FIFO (credit: FIFO room)."""
        mp = self.mp
        rd = _StoreReader(mp)
        m.d.sync += rd.inflight.eq(0)
        m.d.comb += [fifo.w_data.eq(0), fifo.w_en.eq(rd.inflight)]
        space = fifo.level + rd.inflight < fifo.depth - 1
        grant = 0
        want = Signal()
        for b in Buf:
            port = getattr(self, f"rd_{b.name.lower()}")
            sel = c.buf == b
            m.d.comb += [port.addr.eq(rd.word), port.en.eq(want & sel)]
            grant = grant | (port.grant & sel)
            with m.If(rd.inflight & sel):
                m.d.comb += fifo.w_data.eq(port.data)
        with m.If(rd.busy & space):
            m.d.comb += want.eq(1)
            with m.If(grant):
                m.d.sync += [
                    rd.inflight.eq(1),
                    rd.word.eq(rd.word + 1),
                    rd.left.eq(rd.left - 1),
                ]
                with m.If(rd.left == 1):  # the row's last word: the next row follows at once
                    with m.If(rd.rows == 0):
                        m.d.sync += rd.busy.eq(0)
                    with m.Else():
                        rd.row(m, rd.b, self._geo.n, c.stride)
        return rd

    def _writer(
        self, m: Module, c: Signal, al: Realign, fifo: SyncFIFOBuffered
    ) -> tuple[Signal, Signal]:
        """Realigner: buffer words -> HBM beats; the beat merger; the W channel with wlast at
        burst ends. Returns its busy flag and whether the merger holds a beat (the row walk
        is ``self._tx``, ``self._tx_b``)."""
        mp = self.mp
        wb = mp.beat_bytes
        lg = (wb - 1).bit_length()
        tx = self._tx = _Rows(m, mp.axi_addr_bits, "tx")
        tx_b = self._tx_b = Signal(LEN_BITS)
        tx_busy = Signal()
        with m.If(tx_busy & al.idle):
            with m.If(tx.left == 0):
                m.d.sync += tx_busy.eq(0)
            with m.Else():
                m.d.comb += [
                    al.load.eq(1),
                    al.s_in.eq(tx_b[:lg]),
                    al.s_out.eq(tx.addr[:lg]),
                    al.n.eq(self._geo.n),
                    al.base.eq(tx.addr >> lg),
                    al.end.eq(~self._geo.merged | (tx.left == 1)),  # the run's last row
                ]
                m.d.sync += tx_b.eq(tx_b + c.stride)
                tx.next(c.hbm_stride)
        m.d.comb += [
            al.i_data.eq(fifo.r_data),
            al.i_valid.eq(fifo.r_rdy),
            fifo.r_en.eq(al.i_ready),
        ]
        return tx_busy, self._merger(m, al)

    def _merger(self, m: Module, al: Realign) -> Signal:
        """Rows of one run that share a beat: their parts of it (the realigner's words with the
        same address) merge into one W beat, sent once the next word is another beat or the
        run ends. Returns whether a beat is held."""
        mp, axi = self.mp, self.axi
        wb = mp.beat_bytes
        held = Signal(name="st_held")
        h_addr = Signal(len(al.o_addr), name="st_h_addr")
        h_data = Signal(8 * wb, name="st_h_data")
        h_strb = Signal(wb, name="st_h_strb")
        h_end = Signal(name="st_h_end")  # the held beat is its run's last
        same = held & ~h_end & (al.o_addr == h_addr)
        send = held & (h_end | (al.o_valid & ~same))
        sent = send & axi.wready
        m.d.comb += [
            axi.wdata.eq(h_data),
            axi.wstrb.eq(h_strb),
            axi.wlast.eq(h_end | (((h_addr + 1) & (mp.max_burst_beats - 1)) == 0)),
            axi.wvalid.eq(send),
            al.o_ready.eq(~held | same | sent),
        ]
        merged = Cat(
            *(Mux(al.o_strb[t], al.o_data.word_select(t, 8), h_data.word_select(t, 8))
              for t in range(wb))
        )  # fmt: skip
        with m.If(al.o_valid & al.o_ready):
            m.d.sync += [held.eq(1), h_end.eq(al.o_end)]
            with m.If(same):
                m.d.sync += [h_data.eq(merged), h_strb.eq(h_strb | al.o_strb)]
            with m.Else():
                m.d.sync += [h_addr.eq(al.o_addr), h_data.eq(al.o_data), h_strb.eq(al.o_strb)]
        with m.Elif(sent):
            m.d.sync += held.eq(0)
        return held


class _StoreReader:
    """The ST unit's buffer-reader state: rows left after the current one, the buffer byte
    of the next row, the word to read, words of the row still to read, busy, a word in
    flight."""

    def __init__(self, mp: MachineParams) -> None:
        self.lg = (mp.beat_bytes - 1).bit_length()
        self.wb = mp.beat_bytes
        self.rows = Signal(17, name="rd_rows")
        self.b = Signal(LEN_BITS, name="rd_b")
        self.word = Signal(max(mp.addr_bits(b) for b in Buf) + 8, name="rd_word")
        self.left = Signal(LEN_BITS + 1, name="rd_left")
        self.busy = Signal(name="rd_busy")
        self.inflight = Signal(name="rd_inflight")

    def row(self, m: Module, b: object, n: object, stride: object) -> None:
        """Make the row of ``n`` bytes at buffer byte ``b`` the current one."""
        m.d.sync += [
            self.word.eq(b >> self.lg),
            self.left.eq((b[: self.lg] + n + (self.wb - 1)) >> self.lg),
            self.b.eq(b + stride),
            self.rows.eq(self.rows - 1),
        ]

    def begin(self, m: Module, off: object, n: object, stride: object, rows: object) -> None:
        """Start on a command's ``rows`` rows of ``n`` bytes from byte ``off``, ``stride``
        apart (``rows`` >= 1)."""
        m.d.sync += [
            self.busy.eq(1),
            self.word.eq(off >> self.lg),
            self.left.eq((off[: self.lg] + n + (self.wb - 1)) >> self.lg),
            self.b.eq(off + stride),
            self.rows.eq(rows - 1),
        ]
