"""Dependency tokens: assignment (the compiler's scheduling of the decoupled units) and the
static deadlock-freedom proof.

Assignment. Barriers cut the template into straight-line segments (the lowering puts one before
every LOOP and ENDLOOP, so a segment never spans loop boundaries and every loop iteration starts
with all earlier work complete). Within a segment, walking the instructions in program order,
each unit instruction ``b`` on unit V depends on the earlier instructions of other units whose
buffer footprint conflicts with its own (read-after-write, write-after-read, write-after-write).
For each other unit U, let ``a`` be the latest such instruction on U. If V is already ordered
after an instruction of U at or after ``a`` (directly, or transitively through the tokens it
popped: the pass keeps each unit's transitive knowledge as a vector), nothing is needed;
otherwise ``a`` gets the release bit V and ``b`` the wait bit U. Pushes on queue U->V are then in U's program order and
pops in V's, and the k-th pop pairs with the k-th push, which is exactly ``b``'s producer: the
FIFO token protocol is sound by construction. Choosing ``a`` itself (not U's latest
instruction) keeps the schedule as loose as the data allows, so LD runs ahead into free buffer
slots while the engines work.

A barrier over the active units P with hub SFU: every U in P-{SFU} issues ``SYNC.U`` releasing
SFU; ``SYNC.SFU`` waits for all of them and releases all; every U issues ``SYNC.U`` waiting for
SFU.

Deadlock freedom (:func:`check_deadlock`). Each token queue has a single consumer, so the token
machine is persistent: an enabled instruction stays enabled until it runs, and if one schedule
completes every unit's stream, every fair schedule does. The checker therefore runs one greedy
schedule symbolically (:func:`hwflow.isa.dispatch` without executing anything) over each straight-line segment, starting from the
counts carried in; at every loop it checks that the body returns the counts it started from
(so all iterations are identical and any trip count completes), and at END that every queue is
empty. A stuck schedule raises :class:`~hwflow.errors.SyncError` naming the blocked instructions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from hwflow.compiler.lower import Node
from hwflow.errors import SyncError
from hwflow.isa import TOKEN_UNITS, Instr, Unit, dispatch, loop_spans, make, mask_str, spec

__all__ = ["assign_tokens", "check_deadlock"]

HUB = Unit.SFU


def _barrier(active: Sequence[Unit]) -> list[Instr]:
    others = [u for u in active if u != HUB]
    mask = sum(1 << u for u in others)
    out = [make(f"SYNC.{u.name}", release=1 << HUB) for u in others]
    out.append(make(f"SYNC.{HUB.name}", wait=mask, release=mask))
    out += [make(f"SYNC.{u.name}", wait=1 << HUB) for u in others]
    return out


def assign_tokens(nodes: Sequence[Node]) -> tuple[Instr, ...]:
    """Turn lowered nodes into instructions with wait/release masks (see module doc)."""
    active = sorted(
        {spec(n.op).unit for n in nodes if n.op != "BARRIER" and spec(n.op).unit != Unit.SYS}
        | {HUB}
    )
    units = [spec(n.op).unit if n.op != "BARRIER" else None for n in nodes]
    wait = [0] * len(nodes)
    rel = [0] * len(nodes)
    # per buffer: {(lo, hi): [last writer (unit, idx) | None, {unit: last read idx}]}
    state: dict[int, dict[tuple[int, int], list]] = {}
    nu = max(TOKEN_UNITS) + 1
    # known[v][u]: latest instruction of u that unit v is ordered after (transitively)
    known: dict[int, list[int]] = {}
    snap: dict[int, list[int]] = {}  # knowledge of an instruction's unit when it completes

    def reset() -> None:
        state.clear()
        known.clear()
        snap.clear()

    for i, n in enumerate(nodes):
        if n.op == "BARRIER":
            reset()
            continue
        u = units[i]
        if u == Unit.SYS:
            if n.op in ("LOOP", "ENDLOOP") and (i == 0 or nodes[i - 1].op != "BARRIER"):
                raise SyncError(f"node {i}: {n.op} not preceded by a barrier")
            continue
        deps: dict[int, int] = {}
        hits: list[tuple[int, int]] = []
        for spans, is_write in ((n.reads, False), (n.writes, True)):
            for buf, lo, hi in spans:
                for (a, b), rec in state.get(buf, {}).items():
                    if a < hi and lo < b:
                        if rec[0] is not None:
                            hits.append(rec[0])
                        if is_write:
                            hits.extend(rec[1].items())
        for unit, idx in hits:
            if unit != u and idx > deps.get(unit, -1):
                deps[unit] = idx
        kv = known.setdefault(u, [-1] * nu)
        # the latest dependency first: its knowledge may cover the others
        for src, a in sorted(deps.items(), key=lambda x: -x[1]):
            if kv[src] >= a:
                continue
            rel[a] |= 1 << u
            wait[i] |= 1 << src
            for w, k in enumerate(snap[a]):
                if k > kv[w]:
                    kv[w] = k
        kv[u] = i
        snap[i] = list(kv)
        for buf, lo, hi in n.reads:
            rec = state.setdefault(buf, {}).setdefault((lo, hi), [None, {}])
            rec[1][u] = i
        for buf, lo, hi in n.writes:
            recs = state.setdefault(buf, {})
            # a write supersedes what it fully covers; keep the rest (partial overlaps)
            for key in [k for k in recs if lo <= k[0] and k[1] <= hi and k != (lo, hi)]:
                del recs[key]
            rec = recs.setdefault((lo, hi), [None, {}])
            rec[0] = (u, i)
            rec[1] = {}
    out: list[Instr] = []
    for i, n in enumerate(nodes):
        if n.op == "BARRIER":
            out.extend(_barrier(active))
        else:
            out.append(make(n.op, wait=wait[i], release=rel[i], **n.fields))
    return tuple(out)


def _run_segment(
    instrs: Sequence[Instr], pcs: list[int], queues: dict[tuple[int, int], deque[None]]
) -> None:
    at: dict[Unit, list[int]] = {u: [] for u in TOKEN_UNITS}
    for pc in pcs:
        at[instrs[pc].unit].append(pc)
    streams = {u: [instrs[pc] for pc in unit_pcs] for u, unit_pcs in at.items()}
    pos = dispatch(streams, queues)
    stuck = [(u, at[u][pos[u]]) for u in TOKEN_UNITS if pos[u] < len(streams[u])]
    if stuck:
        desc = "; ".join(
            f"{u.name} at pc {pc} ({instrs[pc].op}) waits on {mask_str(instrs[pc].wait)}"
            for u, pc in stuck
        )
        raise SyncError(f"deadlock: no unit can proceed: {desc}")


def _counts(queues: dict[tuple[int, int], deque[None]]) -> dict[tuple[int, int], int]:
    return {k: len(q) for k, q in queues.items() if q}


def check_deadlock(instrs: Sequence[Instr]) -> None:
    """Prove that every unit's stream of the template completes for any loop trip counts (see
    the module doc); SyncError naming the blocked instructions otherwise."""
    spans = loop_spans(instrs)

    def walk(lo: int, hi: int, queues: dict[tuple[int, int], deque[None]]) -> None:
        pcs: list[int] = []
        pc = lo
        while pc < hi:
            ins = instrs[pc]
            if ins.op == "LOOP":
                _run_segment(instrs, pcs, queues)
                pcs = []
                end = spans[pc]
                before = _counts(queues)
                if ins["count"]:
                    walk(pc + 1, end, queues)
                    after = _counts(queues)
                    if after != before:
                        raise SyncError(
                            f"loop at pc {pc}: its body changes the token counts "
                            f"({before} -> {after}), so iterations differ"
                        )
                pc = end + 1
                continue
            if ins.unit != Unit.SYS:
                pcs.append(pc)
            pc += 1
        _run_segment(instrs, pcs, queues)

    queues: dict[tuple[int, int], deque[None]] = {}
    walk(0, len(instrs), queues)
    left = {f"{Unit(a).name}->{Unit(b).name}": n for (a, b), n in _counts(queues).items()}
    if left:
        raise SyncError(f"tokens left in queues at END: {left}")
