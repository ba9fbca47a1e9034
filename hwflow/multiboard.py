"""Functional simulation of a multi-board system: every board's :class:`~hwflow.funcsim.FuncSim`
on its own HBM image, joined by links that carry the data of SEND/RECV and ALLRED.

The boards advance in turns (:meth:`FuncSim.advance`: each runs as far as its tokens and its
link data allow) until all finish; a turn in which no board moves is a deadlock across boards,
reported naming every blocked unit of every board. Link semantics (:mod:`hwflow.isa`):

* ``SEND`` to board ``peer`` appends its rows to the FIFO (this board -> peer); ``RECV`` from
  ``peer`` waits for rows in the FIFO (peer -> this board) and writes them; the row shapes must
  match (a mismatch is a compiler bug, raised).
* ``ALLRED`` over a ring of ``peer`` boards: the k-th ALLRED of every board is one collective;
  each board's rows join it once its tokens are there, and every board's instruction completes
  (writing the sum, :func:`hwflow.numerics.reduce_partials`) when all have joined.

The multi-board check (:func:`check_system_against_reference`) compares board 0's logits (the
last board's in pipeline mode) and every board's share of the KV cache with the single-board
integer reference, bit for bit.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from hwflow import numerics as nx
from hwflow.compiler.partition import SystemCompiled, board_image, compile_system, shard_model
from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.errors import ConfigError, ProgramError, SyncError
from hwflow.funcsim import FuncSim, boundary_lengths
from hwflow.isa import Buf, Concrete, Runtime, Unit

__all__ = ["Links", "System", "check_system_against_reference"]


class Links:
    """The links of a ring of ``boards``: point-to-point FIFOs and the open collectives."""

    def __init__(self, boards: int) -> None:
        self.boards = boards
        self.fifo: dict[tuple[int, int], deque[np.ndarray]] = {}
        self.joined: dict[int, dict[int, np.ndarray]] = {}  #: collective k -> board -> rows
        self.done: dict[int, set[int]] = {}  #: collective k -> boards that took the sum
        self.seq = [0] * boards  #: per board, its next collective

    def end(self, board: int) -> BoardLinks:
        return BoardLinks(self, board)


class BoardLinks:
    """Board ``board``'s end of :class:`Links` (what a :class:`FuncSim` calls)."""

    def __init__(self, links: Links, board: int) -> None:
        self.links, self.board = links, board
        self.sim: FuncSim | None = None

    def _rows(self, sim: FuncSim, c: Concrete) -> np.ndarray:
        """The instruction's rows as they are in the buffer (no hazard check: its tokens are
        there, so its producers completed)."""
        rows, rb, st, off = c["rows"], c["row_bytes"], c["stride"], c["off"]
        if rows <= 0 or rb <= 0:
            return np.zeros((max(rows, 0), max(rb, 0)), np.uint8)
        mem = sim.bufs[sim_buf(c)]
        idx = off + np.arange(rows)[:, None] * st + np.arange(rb)[None, :]
        if idx.max() >= mem.size:
            raise ProgramError(f"pc {c.pc} ({c.op}) reaches beyond its buffer")
        return mem[idx].copy()

    def ready(self, unit: Unit, c: Any) -> bool:
        """Whether a link instruction's data are there (see the module doc)."""
        if c.op == "RECV":
            return bool(self.links.fifo.get((c["peer"], self.board)))
        if c.op == "ALLRED":
            ln = self.links
            k = ln.seq[self.board]
            got = ln.joined.setdefault(k, {})
            if self.board not in got:
                assert self.sim is not None
                got[self.board] = self._rows(self.sim, c)
            if c["peer"] != ln.boards:
                raise ProgramError(
                    f"pc {c.pc}: ALLRED over {c['peer']} boards in a system of {ln.boards}"
                )
            return len(got) == ln.boards
        return True

    def execute(self, sim: FuncSim, c: Concrete) -> None:
        """Run a link instruction on ``sim`` (the board's simulator)."""
        ln = self.links
        shape = (c["rows"], c["row_bytes"])
        if c.op == "SEND":
            data = sim._read(c, sim_buf(c), c["off"], c["rows"], c["stride"], c["row_bytes"])
            ln.fifo.setdefault((self.board, c["peer"]), deque()).append(np.array(data))
        elif c.op == "RECV":
            data = ln.fifo[(c["peer"], self.board)].popleft()
            if data.shape != shape:
                raise ProgramError(f"pc {c.pc}: RECV of {shape} rows met a SEND of {data.shape}")
            sim._write(c, sim_buf(c), c["off"], c["stride"], data)
        else:  # ALLRED
            k = ln.seq[self.board]
            sim._read(c, sim_buf(c), c["off"], c["rows"], c["stride"], c["row_bytes"])
            parts = [np.ascontiguousarray(ln.joined[k][b]).view("<i4") for b in range(ln.boards)]
            red = nx.reduce_max if c["red"] else nx.reduce_partials
            total = red(parts).astype("<i4").view(np.uint8)
            sim._write(c, sim_buf(c), c["off"], c["stride"], total.reshape(shape))
            ln.seq[self.board] += 1
            fin = ln.done.setdefault(k, set())
            fin.add(self.board)
            if len(fin) == ln.boards:
                del ln.joined[k], ln.done[k]


def sim_buf(c: Concrete) -> Buf:
    """The on-chip buffer a link instruction reads or writes."""
    return Buf(c["buf"])


class System:
    """The functional simulators of every board of a compiled system, joined by links."""

    def __init__(self, sysc: SystemCompiled, hw: HardwarePreset, images: list[np.ndarray]):
        n = len(sysc.boards)
        self.sysc = sysc
        self.links = Links(n)
        self.sims = []
        for b, (comp, cfg) in enumerate(zip(sysc.boards, sysc.cfgs, strict=True)):
            end = self.links.end(b)
            fs = FuncSim(comp.program, hw, cfg, comp.layout, images[b], links=end)
            end.sim = fs
            self.sims.append(fs)

    def step(self, phase: str, x0: np.ndarray, pos: int) -> np.ndarray:
        """Write the input rows (to every board that loads them), run every board, return the
        logits of the board that computes them (the last)."""
        x0 = np.asarray(x0)
        rt = Runtime(x0.shape[0], pos)
        raw = x0.astype("<i4").view(np.uint8).ravel()
        for fs in self.sims:
            fs.program.select(phase, rt)
            inp = fs.layout.region("input")
            fs.hbm[inp.base : inp.base + raw.size] = raw
            fs.begin(phase, rt)
        while not all(fs.done for fs in self.sims):
            moved = [fs.advance() for fs in self.sims]
            if not any(moved):
                stuck = "; ".join(
                    f"board {b}: {', '.join(fs.blocked())}"
                    for b, fs in enumerate(self.sims)
                    if not fs.done
                )
                raise SyncError(f"deadlock across boards: {stuck}")
        self.last_stats = [fs.finish() for fs in self.sims]
        last = self.sims[-1]
        lg = last.layout.region("logits")
        return last.hbm[lg.base : lg.base + 4 * last.cfg.vocab].view("<i4").astype(np.int64)


def check_system_against_reference(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    boards: int,
    mode: str,
    max_len: int = 64,
    decode_steps: int = 4,
    seed: int = 0,
    lengths: list[int] | None = None,
) -> dict[str, Any]:
    """Compile for ``boards`` boards, run the system on the functional simulators and compare
    logits and every board's KV cache share with the single-board integer reference (prefill at
    the bucket boundaries, then greedy decode steps). Returns the figures (mismatches are
    reported, not raised)."""
    from hwflow.compiler import DECODE_BUCKET
    from hwflow.compress import quantize_model, random_weights
    from hwflow.reference import generate_int

    sysc = compile_system(cfg, plan, hw, max_len, boards, mode)
    if not 1 <= decode_steps < max_len:
        raise ConfigError(
            f"--decode {decode_steps} must lie in 1..{max_len - 1} (max_len {max_len})"
        )
    qm = quantize_model(cfg, plan, random_weights(cfg, seed))
    shares = [shard_model(qm, c, p) for c, p in zip(sysc.cfgs, sysc.pars, strict=True)]
    images = [
        board_image(comp, qm, share, par)
        for comp, share, par in zip(sysc.boards, shares, sysc.pars, strict=True)
    ]
    rng = np.random.default_rng(seed + 11)
    runs: list[dict[str, Any]] = []

    def kv_equal(sy: System, kv: Any, n: int) -> bool:
        for fs, par in zip(sy.sims, sysc.pars, strict=True):
            for li in range(fs.cfg.layers):
                g = li + par.layers[0]
                h = slice(par.index * fs.cfg.kv_heads, (par.index + 1) * fs.cfg.kv_heads)
                if par.mode != "tensor":
                    h = slice(0, cfg.kv_heads)
                k, v = fs.kv_cache(li, n)
                if not (np.array_equal(k, kv.k[g][h, :n]) and np.array_equal(v, kv.v[g][h, :n])):
                    return False
        return True

    def fresh() -> System:
        return System(sysc, hw, [im.copy() for im in images])

    instrs = 0
    for n in lengths or boundary_lengths(max_len, sysc.boards[0].tt):
        ids = rng.integers(cfg.vocab, size=n)
        ref = generate_int(qm, ids, 0)[0]
        sy = fresh()
        logits = sy.step("prefill", qm.embed(ids, 0), 0)
        instrs += sum(s.instructions for s in sy.last_stats)
        ok = np.array_equal(logits, ref.logits[-1]) and kv_equal(sy, ref.kv, n)
        runs.append({"phase": "prefill", "tokens": n, "pos": 0, "equal": bool(ok)})
    start = max(1, min(DECODE_BUCKET - 3, max_len - decode_steps))
    ids = rng.integers(cfg.vocab, size=start)
    ref = generate_int(qm, ids, decode_steps)
    sy = fresh()
    sy.step("prefill", qm.embed(ids, 0), 0)
    pos = start
    for s in range(1, decode_steps + 1):
        tok = np.array([int(np.argmax(ref[s - 1].logits[-1]))])
        logits = sy.step("decode", qm.embed(tok, pos), pos)
        instrs += sum(st.instructions for st in sy.last_stats)
        pos += 1
        ok = np.array_equal(logits, ref[s].logits[-1])
        if s == decode_steps:
            ok = ok and kv_equal(sy, ref[-1].kv, pos)
        runs.append({"phase": "decode", "tokens": 1, "pos": pos - 1, "equal": bool(ok)})
    return {
        "model": cfg.name,
        "plan": plan.name,
        "preset": hw.name,
        "boards": boards,
        "parallel": mode,
        "max_len": max_len,
        "bit_exact": all(r["equal"] for r in runs),
        "steps": runs,
        "instructions": instrs,
    }
