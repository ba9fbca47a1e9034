"""Functional simulator: executes a compiled program instruction by instruction on numpy state.

State: the HBM image (a uint8 array laid out by :mod:`hwflow.compiler.layout`) and the five
on-chip buffers of the preset. A step selects the template serving it, gets the concrete
per-unit streams from :func:`hwflow.isa.expand` (the one definition of loops and registers,
shared with the cycle model), and runs the units as decoupled in-order machines that start an
instruction only when every token it waits for is in its queue. The arithmetic of every op is a
call to :mod:`hwflow.numerics` on the operands read from the buffers, so the results equal the
integer reference (:func:`hwflow.reference.run_int`) bit for bit. Operands are read and
written in the formats the compiler lays out (:mod:`hwflow.isa`: element widths per SFU
function in ``SFU_FORMATS``, the MM/MV output width ``obits``, row factors in the 4 bytes before
each per-row INT8 row; :mod:`hwflow.compiler.layout`: weight tiles and parameter blobs); a step's
input rows are INT32 (the residual stream) and its logits INT32.

Hazard detection (vector clocks). Every unit keeps a vector clock of how many instructions of
each unit it *knows* completed: its own count, merged with the clock carried by every token it
pops (a token carries the releasing unit's clock). Each byte of each buffer and of HBM records
its last writer (unit, count) and, per unit, its last reader. An instruction that reads a byte
whose writer it does not know completed (read before release), or writes a byte another unit
read or wrote without it knowing, raises :class:`~hwflow.errors.SyncError` naming both sides.
This is independent of the interleaving the simulator happens to choose, and independent of
the compiler's own token analysis, which it therefore checks.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwflow import numerics as nx
from hwflow.compiler.layout import BeatGeometry, HbmLayout, TileSpec, key_row_bytes
from hwflow.config import HardwarePreset, ModelConfig
from hwflow.errors import ConfigError, ProgramError, SyncError
from hwflow.isa import (
    LINK_OPS,
    MATMUL_FUNCS,
    ROW_FACTOR_BYTES,
    SFU_FORMATS,
    SFU_FUNCS,
    TOKEN_UNITS,
    Buf,
    Concrete,
    Program,
    Runtime,
    SoftmaxMask,
    Unit,
    dispatch,
    expand,
)
from hwflow.model import block_keep
from hwflow.numerics import RESIDUAL_BITS

__all__ = ["FuncSim", "StepStats", "boundary_lengths", "check_against_reference"]

HBM = 5  #: pseudo buffer id of HBM in hazard records
_WIDTH = {8: "<i1", 16: "<i2", 32: "<i4"}  #: signed element dtype by bits
_NAMES = {**{b.value: b.name for b in Buf}, HBM: "HBM"}


@dataclass(frozen=True)
class StepStats:
    """What one step executed."""

    instructions: int
    per_unit: Mapping[str, int]
    seconds: float


class _Tracker:
    """Per-byte last writer / last readers of one memory, for vector-clock hazard checks."""

    def __init__(self, size: int) -> None:
        self.w_unit = np.full(size, -1, np.int8)
        self.w_seq = np.zeros(size, np.int64)
        self.r_seq = np.zeros((len(TOKEN_UNITS), size), np.int64)


class FuncSim:
    """Runs steps of ``program`` on ``hbm`` (modified in place: the KV cache persists)."""

    def __init__(
        self,
        program: Program,
        hw: HardwarePreset,
        cfg: ModelConfig,
        layout: HbmLayout,
        hbm: np.ndarray,
        check_hazards: bool = True,
        links: Any = None,
    ) -> None:
        program.check_preset(hw.digest, hw.name)
        if hbm.size < layout.total:
            raise ProgramError(f"HBM image holds {hbm.size} bytes, the layout needs {layout.total}")
        self.program = program
        self.hw = hw
        self.cfg = cfg
        self.layout = layout
        self.hbm = hbm
        self.check_hazards = check_hazards
        self.sizes = {b: hw.buffers.bytes(b.name.lower()) for b in Buf}
        self.geo = BeatGeometry.from_preset(hw)
        #: multi-board: this board's end of the links (:class:`hwflow.multiboard.BoardLinks`)
        self.links = links

    @classmethod
    def on_buffers(cls, hw: HardwarePreset, bufs: Mapping[Buf, np.ndarray]) -> FuncSim:
        """An executor of single unit instructions (:meth:`execute`) on the given on-chip
        buffer contents (modified in place), without a program, HBM or hazard checks: the
        reference an RTL unit bench compares with."""
        fs = cls.__new__(cls)
        fs.hw, fs.check_hazards = hw, False
        fs.hbm = np.zeros(0, np.uint8)
        fs.sizes = {b: hw.buffers.bytes(b.name.lower()) for b in Buf}
        fs.geo = BeatGeometry.from_preset(hw)
        fs.bufs = dict(bufs)
        return fs

    def execute(self, c: Concrete) -> None:
        """Execute one unit instruction on the current buffers (and HBM)."""
        self._exec(c)

    # ---------------------------------------------------------------- host side
    def step(self, phase: str, x0: np.ndarray, pos: int, seq: int = 0) -> np.ndarray:
        """Write the INT32 input rows, run one step (of sequence / KV-cache slot ``seq``),
        return the last token's INT32 logits."""
        rt = Runtime(np.shape(x0)[0] if np.ndim(x0) == 2 else 0, pos, seq)
        return self._step(phase, x0, rt)[0]

    def step_batch(self, x0: np.ndarray, positions: list[int]) -> np.ndarray:
        """A batched decode step: row i of ``x0`` is sequence (slot) i's token at position
        ``positions[i]``; returns the INT32 logits of every sequence, [len(positions), vocab]."""
        return self._step("decode", x0, Runtime.batch(positions))

    def _step(self, phase: str, x0: np.ndarray, rt: Runtime) -> np.ndarray:
        """Write the input rows, run the step, return its logit rows (prefill: one)."""
        x0 = np.asarray(x0)
        if x0.ndim != 2 or x0.shape[1] != self.cfg.hidden:
            raise ProgramError(
                f"step input of shape {x0.shape}: expected [tokens, {self.cfg.hidden}] INT32 rows"
            )
        lo, hi = -(2 ** (RESIDUAL_BITS - 1)), 2 ** (RESIDUAL_BITS - 1) - 1
        if x0.size and (x0.min() < lo or x0.max() > hi):
            raise ProgramError(f"step input outside the INT{RESIDUAL_BITS} range")
        if rt.seq >= self.layout.batch or (phase == "decode" and rt.seq):
            raise ProgramError(
                f"sequence {rt.seq}: the program holds {self.layout.batch} KV caches and a "
                "decode step's rows are slots 0..LEN-1 (step_batch)"
            )
        self.program.select(phase, rt)  # refuse before writing HBM
        inp = self.layout.region("input")
        raw = x0.astype("<i4").view(np.uint8).ravel()
        self.hbm[inp.base : inp.base + raw.size] = raw
        self.last_stats = self.run(phase, rt)
        lg = self.layout.region("logits")
        n = 4 * self.cfg.vocab * (rt.length if phase == "decode" else 1)
        out = self.hbm[lg.base : lg.base + n].view("<i4").astype(np.int64)
        return out.reshape(-1, self.cfg.vocab)

    def kv_cache(self, layer: int, length: int, seq: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """K and V of ``layer``'s first ``length`` positions of sequence (KV-cache slot)
        ``seq`` as [kv_heads, length, head_dim] (rotated keys: the K records' codes)."""
        hd = self.cfg.head_dim
        k = self._kv_rows(layer, length, seq, "K", key_row_bytes(self.cfg, self.layout.rotated))
        v = self._kv_rows(layer, length, seq, "V", hd)
        return k[..., k.shape[-1] - hd :].view(np.int8).copy(), v.view(np.int8).copy()

    def key_factors(self, layer: int, length: int, seq: int = 0) -> np.ndarray:
        """Rotated keys: the row factors of ``layer``'s first ``length`` K records as
        [kv_heads, length, 2] (``m``, ``e``; :attr:`hwflow.reference.KVCache.kf`'s form)."""
        if not self.layout.rotated:
            raise ProgramError("the program's keys are not rotated: its K rows have no factors")
        rec = self._kv_rows(layer, length, seq, "K", key_row_bytes(self.cfg, True))
        rf = np.ascontiguousarray(rec[..., :ROW_FACTOR_BYTES])
        m = rf[..., :2].copy().view("<u2")[..., 0].astype(np.int64)
        e = rf[..., 2:].copy().view("<i2")[..., 0].astype(np.int64)
        return np.stack([m, e], axis=-1)

    def _kv_rows(self, layer: int, length: int, seq: int, which: str, row: int) -> np.ndarray:
        """The first ``length`` rows of ``row`` bytes of each ``which`` ("K" or "V") head of
        ``layer`` as uint8 [kv_heads, length, row]."""
        c, lay = self.cfg, self.layout
        at = lay.kv_v_offset if which == "V" else 0
        base = lay.region("kv").base + seq * lay.kv_seq_bytes + layer * lay.kv_layer_bytes + at
        hs = lay.head_stride(which)  # head stride (padded)
        heads = self.hbm[base : base + c.kv_heads * hs].reshape(c.kv_heads, hs)
        return heads[:, : length * row].reshape(c.kv_heads, length, row)

    # ---------------------------------------------------------------- execution
    def run(self, phase: str, runtime: Runtime) -> StepStats:
        """Execute the template serving ``runtime``; SyncError on a hazard or a deadlock."""
        self.begin(phase, runtime)
        self.advance()
        return self.finish()

    def begin(self, phase: str, runtime: Runtime) -> None:
        """Expand the template serving ``runtime`` and reset the buffers (then
        :meth:`advance` until done, then :meth:`finish`: a multi-board system interleaves
        its boards' advances)."""
        self.t0 = time.perf_counter()
        tmpl = self.program.select(phase, runtime)
        streams: dict[Unit, list[Concrete]] = {u: [] for u in TOKEN_UNITS}
        for c in expand(tmpl, runtime):
            streams[c.unit].append(c)
        self.bufs = {b: np.zeros(self.sizes[b], np.uint8) for b in Buf}
        if self.check_hazards:
            self.track = {b.value: _Tracker(self.sizes[b]) for b in Buf}
            self.track[HBM] = _Tracker(self.hbm.size)
        nu = len(TOKEN_UNITS)
        self.vc = {u: np.zeros(nu, np.int64) for u in TOKEN_UNITS}
        self.streams = streams
        self.queues: dict[tuple[int, int], deque[np.ndarray]] = {}
        self.pos = dict.fromkeys(streams, 0)

    def _fire(self, u: Unit, c: Concrete, popped: list[np.ndarray]) -> np.ndarray | None:
        vc = self.vc[u]
        for clock in popped:  # a token carries its releaser's vector clock
            np.maximum(vc, clock, out=vc)
        self._exec(c)
        vc[u] += 1
        return vc.copy() if c.release else None

    def advance(self) -> bool:
        """Run every unit as far as tokens (and link data) allow; whether anything ran."""
        before = sum(self.pos.values())
        ready = self.links.ready if self.links is not None else None
        dispatch(self.streams, self.queues, self._fire, ready, self.pos)
        return sum(self.pos.values()) > before

    @property
    def done(self) -> bool:
        return all(self.pos[u] == len(s) for u, s in self.streams.items())

    def blocked(self) -> list[str]:
        """The units not at their stream's end: where each waits."""
        return [
            f"{u.name} at pc {self.streams[u][self.pos[u]].pc} ({self.streams[u][self.pos[u]].op})"
            for u in TOKEN_UNITS
            if self.pos[u] < len(self.streams[u])
        ]

    def finish(self) -> StepStats:
        """SyncError on a deadlock or tokens left over; the step's statistics."""
        stuck = self.blocked()
        if stuck:
            raise SyncError(f"deadlock while running: {', '.join(stuck)} wait for tokens")
        left = {f"{Unit(a).name}->{Unit(b).name}": len(q) for (a, b), q in self.queues.items() if q}
        if left:
            raise SyncError(f"tokens left in queues at the end of the step: {left}")
        per = {u.name: len(self.streams[u]) for u in TOKEN_UNITS}
        return StepStats(sum(per.values()), per, time.perf_counter() - self.t0)

    # ---------------------------------------------------------------- hazards
    def _access(self, c: Concrete, mem: int, lo: int, hi: int, write: bool) -> None:
        if not self.check_hazards or hi <= lo:
            return
        t = self.track[mem]
        u = c.unit
        vc = self.vc[u]
        wu = t.w_unit[lo:hi]
        ws = t.w_seq[lo:hi]
        has = wu >= 0
        if has.any():
            known = vc[np.where(has, wu, 0)]
            bad = has & (ws > known) & (wu != u)
            if bad.any():
                i = int(np.argmax(bad))
                raise SyncError(
                    f"hazard: {u.name} pc {c.pc} ({c.op}) {'writes' if write else 'reads'} "
                    f"{_NAMES[mem]} byte {lo + i} written by {Unit(int(wu[i])).name} instruction "
                    f"#{int(ws[i]) - 1} before that unit released it"
                )
        seq = int(vc[u]) + 1
        if write:
            for v in TOKEN_UNITS:
                if v == u:
                    continue
                r = t.r_seq[v, lo:hi]
                if r.size and int(r.max()) > vc[v]:
                    i = int(np.argmax(r > vc[v]))
                    raise SyncError(
                        f"hazard: {u.name} pc {c.pc} ({c.op}) overwrites {_NAMES[mem]} byte "
                        f"{lo + i} still to be read by {v.name} instruction #{int(r[i]) - 1}"
                    )
            t.w_unit[lo:hi] = u
            t.w_seq[lo:hi] = seq
        else:
            t.r_seq[u, lo:hi] = seq

    # ---------------------------------------------------------------- memory views
    def _mem(self, buf: int) -> np.ndarray:
        return self.hbm if buf == HBM else self.bufs[Buf(buf)]

    def _span(self, off: int, rows: int, stride: int, width: int) -> tuple[int, int]:
        return (off, off + (rows - 1) * stride + width) if rows > 0 and width > 0 else (0, 0)

    def _touch(
        self, c: Concrete, buf: int, off: int, rows: int, stride: int, width: int, write: bool
    ) -> np.ndarray:
        """The memory of ``buf`` after a bounds and hazard check of the rows accessed."""
        lo, hi = self._span(off, rows, stride, width)
        mem = self._mem(buf)
        if hi > mem.size:
            raise ProgramError(
                f"pc {c.pc} ({c.op}) {'writes' if write else 'reads'} {_NAMES[buf]} bytes "
                f"{lo}..{hi} beyond its {mem.size}"
            )
        self._access(c, buf, lo, hi, write)
        return mem

    def _read(
        self, c: Concrete, buf: int, off: int, rows: int, stride: int, width: int
    ) -> np.ndarray:
        mem = self._touch(c, buf, off, rows, stride, width, False)
        if rows <= 0 or width <= 0:
            return np.zeros((max(rows, 0), max(width, 0)), np.uint8)
        idx = off + np.arange(rows)[:, None] * stride + np.arange(width)[None, :]
        return mem[idx]

    def _write(self, c: Concrete, buf: int, off: int, stride: int, data: np.ndarray) -> None:
        rows, width = data.shape
        mem = self._touch(c, buf, off, rows, stride, width, True)
        if rows and width:
            idx = off + np.arange(rows)[:, None] * stride + np.arange(width)[None, :]
            mem[idx] = data

    def _operand(self, c: Concrete, p: str, rows: int, n: int, dtype: str) -> np.ndarray:
        """Operand ``p`` as [rows, n] elements of ``dtype`` (little-endian), as int64."""
        size = np.dtype(dtype).itemsize
        raw = self._read(c, c[f"{p}_buf"], c[f"{p}_off"], rows, c[f"{p}_stride"], n * size)
        return np.ascontiguousarray(raw).view(dtype).reshape(rows, n).astype(np.int64)

    def _rows(self, c: Concrete, p: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The row factors (m, e) stored before each row of operand ``p``."""
        at = c[f"{p}_off"] - ROW_FACTOR_BYTES
        raw = self._read(c, c[f"{p}_buf"], at, rows, c[f"{p}_stride"], ROW_FACTOR_BYTES)
        raw = np.ascontiguousarray(raw)
        return (
            raw[:, :2].copy().view("<u2").ravel().astype(np.int64),
            raw[:, 2:].copy().view("<i2").ravel().astype(np.int64),
        )

    def _put(
        self,
        c: Concrete,
        out: np.ndarray,
        dtype: str,
        rows: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Write ``out`` [r, n] as ``dtype`` at operand o; with ``rows``, each row's factor
        (uint16 m, int16 e) in the bytes before it."""
        if np.size(out) == 0:
            self._write(c, c["o_buf"], c["o_off"], c["o_stride"], np.zeros((0, 0), np.uint8))
            return
        data = np.ascontiguousarray(np.asarray(out).astype(dtype)).view(np.uint8)
        data = data.reshape(np.shape(out)[0], -1)
        off = c["o_off"]
        if rows is not None:
            m, e = rows
            fac = np.concatenate(
                [
                    np.asarray(m, "<u2").reshape(-1, 1).view(np.uint8),
                    np.asarray(e, "<i2").reshape(-1, 1).view(np.uint8),
                ],
                axis=1,
            )
            data = np.concatenate([fac, data], axis=1)
            off -= ROW_FACTOR_BYTES
        self._write(c, c["o_buf"], off, c["o_stride"], data)

    def _params(self, c: Concrete, n: int, at: int = 0) -> list[int]:
        raw = self._read(c, Buf.PARAM, c["p_off"] + at, 1, 4 * n, 4 * n)
        return [int(v) for v in raw.view("<i4").ravel()]

    # ---------------------------------------------------------------- semantics
    def _exec(self, c: Concrete) -> None:
        op = c.op
        if op.startswith("SYNC"):
            return
        if op == "LD":
            data = self._read(c, HBM, c["hbm"], c["rows"], c["hbm_stride"], c["row_bytes"])
            self._write(c, c["buf"], c["off"], c["stride"], data)
        elif op == "ST":
            data = self._read(c, c["buf"], c["off"], c["rows"], c["stride"], c["row_bytes"])
            self._write(c, HBM, c["hbm"], c["hbm_stride"], data)
        elif op in ("MM", "MV"):
            self._matmul(c)
        elif op == "SFU":
            self._sfu(c)
        elif op in LINK_OPS:
            if self.links is None:
                raise ProgramError(
                    f"pc {c.pc}: {op} needs a multi-board system (hwflow.multiboard)"
                )
            self.links.execute(self, c)
        else:  # pragma: no cover - expand yields unit instructions only
            raise ProgramError(f"pc {c.pc}: cannot execute {op}")

    def _matmul(self, c: Concrete) -> None:
        func, rows, cols, k = c["func"], c["rows"], c["cols"], c["k"]
        if func >= len(MATMUL_FUNCS):
            raise ProgramError(f"pc {c.pc}: matrix func {func} unknown")
        kind = MATMUL_FUNCS[func]
        obits = c["obits"]
        if obits not in _WIDTH:
            raise ProgramError(f"pc {c.pc}: output width obits={obits} (allowed: 8, 16, 32)")
        row = self._rows(c, "a", rows) if c["arow"] else nx.unit_rows(rows)
        if kind in ("linear", "head"):  # weight tile blob at b
            codes, bias, mult, shift, gmult = self._tile(c)
            group = 1 << c["wgroup"] if c["wgroup"] else None
            acc = nx.weight_matmul(self._operand(c, "a", rows, k, "i1"), codes, gmult, group)
            (guard,) = self._params(c, 1)
            out = nx.linear_out(acc, mult, shift, obits, row, guard, bias)
        elif kind == "qk":  # A [rows, k] x K [cols, k]
            acc = nx.matmul_int(
                self._operand(c, "a", rows, k, "i1"), self._operand(c, "b", cols, k, "i1")
            )
            if c["brow"]:  # rotated keys: each key's row factor in the row stage (isa doc)
                mult, shift, guard = self._params(c, 3)
                kf = self._rows(c, "b", cols)
                out = nx.linear_out(acc.T, mult, shift, obits, kf, guard).T
            else:
                mult, shift = self._params(c, 2)
                out = nx.requantize(acc, mult, shift, obits)
        else:  # pv: P [rows, k] (UINT8, row factors) x V [k, cols]
            mult, shift, guard = self._params(c, 3)
            p = self._operand(c, "a", rows, k, "u1")
            v = self._operand(c, "b", k, cols, "i1")
            out = nx.linear_out(nx.matmul_int(p, v.T), mult, shift, obits, row, guard)
        self._put(c, out, _WIDTH[obits])

    def _rotate_heads(self, c: Concrete, x: np.ndarray, per_key: bool) -> None:
        """SFU ropeq / ropek (isa doc) on the INT16 rows ``x``: RoPE at INT16 and the Hadamard
        transform per head of ``aux`` elements; q to INT8 by head h's mult, shift at ``p_off +
        8h``; k to INT8 per row and head, each head's factor in the 4 bytes before its codes."""
        rows, cols, hd = x.shape[0], x.shape[1], c["aux"]
        if hd < 2 or hd & (hd - 1) or cols % hd:
            raise ProgramError(
                f"pc {c.pc}: SFU {SFU_FUNCS[c['func']]} head_dim aux={hd} must be a power of two "
                f"dividing cols={cols}"
            )
        n = cols // hd
        cs = self._operand(c, "b", rows, hd, "<i2")
        heads = x.reshape(rows, n, hd).transpose(1, 0, 2)  # [n, rows, hd]
        y = nx.hadamard_int(nx.rope_int(heads, cs[:, : hd // 2], cs[:, hd // 2 :], 16))
        if not per_key:
            p = np.asarray(self._params(c, 2 * n), np.int64).reshape(n, 2)
            out = nx.requantize(y, p[:, :1, None], p[:, 1:, None], 8)
            self._put(c, out.transpose(1, 0, 2).reshape(rows, cols), "i1")
            return
        q, (m, e) = nx.quant_rows(y)  # [n, rows, hd], factors [n, rows]
        rec = np.concatenate(
            [
                np.ascontiguousarray(m.T, "<u2")[..., None].view(np.uint8),
                np.ascontiguousarray(e.T, "<i2")[..., None].view(np.uint8),
                np.ascontiguousarray(q.transpose(1, 0, 2), np.int8).view(np.uint8),
            ],
            axis=-1,
        )  # [rows, n, 4 + hd]: each head's record
        data = rec.reshape(rows, n * (hd + ROW_FACTOR_BYTES))
        self._write(c, c["o_buf"], c["o_off"] - ROW_FACTOR_BYTES, c["o_stride"], data)

    def _tile(
        self, c: Concrete
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray | None]:
        """The weight tile at b (:meth:`TileSpec.decode`): dense codes [cols, k], INT32 bias
        (or None), mult, shift and the group multipliers [cols, k/G] (``wgroup`` g > 0:
        G = 2**g; else None)."""
        cols, k = c["cols"], c["k"]
        group = 1 << c["wgroup"] if c["wgroup"] else None
        if group is not None and k % group:
            raise ProgramError(f"pc {c.pc}: weight group {group} does not divide k = {k}")
        fmt = (cols, k, c["n"], c["m"], c["wbits"], bool(c["bias"]), self.geo)
        at = TileSpec.sections(*fmt, group)
        blob = self._read(c, c["b_buf"], c["b_off"], 1, 0, at["end"]).ravel()
        gmult = TileSpec.decode_groups(blob, cols, k, c["n"], c["m"], self.geo, at, group)
        return (*TileSpec.decode(blob, *fmt), gmult)

    def _sfu(self, c: Concrete) -> None:
        func, rows, cols = c["func"], c["rows"], c["cols"]
        if func >= len(SFU_FUNCS):
            raise ProgramError(f"pc {c.pc}: SFU func {func} unknown")
        name = SFU_FUNCS[func]
        fmt = SFU_FORMATS[name]
        if rows <= 0 or cols <= 0:
            self._read(c, c["a_buf"], c["a_off"], rows, c["a_stride"], cols * fmt.a)
            self._write(c, c["o_buf"], c["o_off"], c["o_stride"], np.zeros((0, 0), np.uint8))
            return
        x = self._operand(c, "a", rows, cols, _WIDTH[8 * fmt.a])
        rf = None
        if name == "norm":
            (pre,) = self._params(c, 1)
            raw = self._read(c, Buf.PARAM, c["p_off"] + 4, 1, 2 * cols, 2 * cols)
            gamma = raw.view("<i2").ravel().astype(np.int64)
            out, rf = nx.norm_rows(x, gamma, bool(c["aux"] & 1), pre)
        elif name == "softmax":
            mask = None
            if c["mask"]:
                q = c["qpos"] + np.arange(rows)[:, None]
                kp = np.arange(cols)[None, :]
                mask = np.broadcast_to(kp <= q, (rows, cols))
                if c["mask"] == SoftmaxMask.BLOCK:
                    mask = mask & block_keep(q, kp, c["blk"], c["glob"], c["local"])
            out, total = nx.softmax_rows(x, mask)
            rf = nx.recip_factor(total)
        elif name == "rope":
            hd = c["aux"]
            cs = self._operand(c, "b", rows, hd, "<i2")
            cos, sin = cs[:, : hd // 2], cs[:, hd // 2 :]
            heads = x.reshape(rows, cols // hd, hd).transpose(1, 0, 2)
            out = nx.rope_int(heads, cos, sin).transpose(1, 0, 2).reshape(rows, cols)
        elif name in ("ropeq", "ropek"):
            self._rotate_heads(c, x, name == "ropek")
            return
        elif name == "silu":
            mult, shift = self._params(c, 2)
            out = nx.silu_int16(x, mult, shift)
        elif name == "reluq":
            out, rf = nx.quant_rows(nx.relu(x))
        elif name == "add":
            out = nx.add_residual(x, self._operand(c, "b", rows, cols, "<i4"))
        elif name == "mul":
            out, rf = nx.mul_rows(x, self._operand(c, "b", rows, cols, "<i2"))
        elif name in ("rowmax", "qrows"):  # tensor parallel: the FFN activation's row maxima
            v = nx.relu(x) if c["aux"] & 1 else x * self._operand(c, "b", rows, cols, "<i2")
            if name == "rowmax":
                self._put(c, nx.row_max(v)[:, None], "<i4")
                return
            big = np.ascontiguousarray(self._read(c, Buf.PARAM, c["p_off"], rows, 4, 4))
            out, rf = nx.quant_rows(v, big.view("<i4").ravel())
        elif name == "requant":  # a reduced linear: guard, then mult, shift, bias per column
            p = np.asarray(self._params(c, 1 + 3 * cols), np.int64)
            row = self._rows(c, "b", rows) if c["aux"] & 1 else nx.unit_rows(rows)
            mult, shift, bias = p[1 : 1 + cols], p[1 + cols : 1 + 2 * cols], p[1 + 2 * cols :]
            out = nx.linear_out(x, mult, shift, 32, row, int(p[0]), bias)
        else:  # mov
            out = x
        if fmt.row_factor:
            dtype = "u1" if name == "softmax" else "i1"
            self._put(c, out, dtype, rf)
        else:
            self._put(c, out, _WIDTH[8 * fmt.o])


def boundary_lengths(max_len: int, bucket: int) -> list[int]:
    """Prefill lengths on both sides of every bucket boundary up to ``max_len`` (and 1)."""
    out = {1, max_len}
    for b in range(bucket, max_len + 1, bucket):
        out |= {b - 1, b, b + 1}
    return sorted(n for n in out if 1 <= n <= max_len)


def _kv_equal(fs: FuncSim, kv: Any, n: int) -> bool:
    """Whether the simulator's KV cache (and, with rotated keys, every key's factor) equals the
    reference's ``kv`` over the first ``n`` positions of every layer."""
    for li in range(fs.cfg.layers):
        k, v = fs.kv_cache(li, n)
        if not (np.array_equal(k, kv.k[li][:, :n]) and np.array_equal(v, kv.v[li][:, :n])):
            return False
        if fs.layout.rotated and not np.array_equal(fs.key_factors(li, n), kv.kf[li][:, :n]):
            return False
    return True


def check_against_reference(
    cfg: ModelConfig,
    plan: Any,
    hw: HardwarePreset,
    max_len: int = 256,
    decode_steps: int = 8,
    seed: int = 0,
    lengths: list[int] | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    calib_ids: np.ndarray | None = None,
    prompt: np.ndarray | None = None,
) -> dict[str, Any]:
    """Compile, then run the functional simulator against the integer reference.

    ``weights`` (a checkpoint's, with ``calib_ids`` from real text and ``prompt`` token ids to
    run) replace the seeded random weights and random prompts.

    Prefill at every length of :func:`boundary_lengths` (fresh KV cache each), comparing the
    logits and the whole KV cache bit for bit; then ``decode_steps`` greedy decode steps after a
    prompt chosen so that they cross a decode bucket boundary, comparing logits and KV cache.
    Returns the figures; SyncError/ProgramError propagate, a mismatch is reported, not raised.
    """
    from hwflow.compiler import DECODE_BUCKET, compile_model
    from hwflow.compiler.layout import build_hbm_image
    from hwflow.compress import quantize_model, random_weights
    from hwflow.reference import generate_int, quality, quality_sample

    comp = compile_model(cfg, plan, hw, max_len)  # checks max_len first
    if max_len < 2:
        raise ConfigError(f"check needs max_len >= 2 (a prompt and a decode step), got {max_len}")
    if not 1 <= decode_steps < max_len:
        raise ConfigError(
            f"--decode {decode_steps} must lie in 1..{max_len - 1} (max_len {max_len})"
        )
    weights = dict(weights) if weights is not None else random_weights(cfg, seed)
    qm = quantize_model(cfg, plan, weights, calib_ids=calib_ids)
    image = build_hbm_image(comp.layout, qm)
    rng = np.random.default_rng(seed + 11)
    lengths = lengths or boundary_lengths(max_len, comp.tt)
    runs: list[dict[str, Any]] = []
    instrs = 0
    seconds = 0.0

    def draw(n: int) -> np.ndarray:
        return np.asarray(prompt[:n]) if prompt is not None else rng.integers(cfg.vocab, size=n)

    for n in lengths:
        ids = draw(n)
        ref = generate_int(qm, ids, 0)[0]
        fs = FuncSim(comp.program, hw, cfg, comp.layout, image.copy())
        logits = fs.step("prefill", qm.embed(ids, 0), 0)
        instrs += fs.last_stats.instructions
        seconds += fs.last_stats.seconds
        ok = np.array_equal(logits, ref.logits[-1]) and _kv_equal(fs, ref.kv, n)
        runs.append({"phase": "prefill", "tokens": n, "pos": 0, "equal": bool(ok)})
    # decode: prompt ends 3 positions before a decode bucket boundary, so the steps cross it
    start = max(1, min(DECODE_BUCKET - 3, max_len - decode_steps))
    ids = draw(start)
    ref = generate_int(qm, ids, decode_steps)
    fs = FuncSim(comp.program, hw, cfg, comp.layout, image.copy())
    fs.step("prefill", qm.embed(ids, 0), 0)
    pos = start
    for s in range(1, decode_steps + 1):
        tok = np.array([int(np.argmax(ref[s - 1].logits[-1]))])
        logits = fs.step("decode", qm.embed(tok, pos), pos)
        instrs += fs.last_stats.instructions
        seconds += fs.last_stats.seconds
        pos += 1
        ok = np.array_equal(logits, ref[s].logits[-1])
        if s == decode_steps:
            ok = ok and _kv_equal(fs, ref[-1].kv, pos)
        runs.append({"phase": "decode", "tokens": 1, "pos": pos - 1, "equal": bool(ok)})
    return {
        "model": cfg.name,
        "plan": plan.name,
        "preset": hw.name,
        "max_len": max_len,
        "bit_exact": all(r["equal"] for r in runs),
        "steps": runs,
        "instructions": instrs,
        "funcsim_seconds": seconds,
        "instructions_per_second": instrs / seconds if seconds else 0.0,
        "quality": quality(
            qm,
            weights,
            *(
                quality_sample(cfg, cfg.max_positions, rng, min(40, max_len))
                if prompt is None
                else (draw(min(40, max_len - 1)), 1)
            ),
        ),
    }
