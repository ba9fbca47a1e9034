"""The hwflow compiler: model config + compression plan + hardware preset -> a length-adaptive
:class:`~hwflow.isa.Program`.

Passes (:func:`compile_model`):

1. **Check** the plan against the preset (``HardwarePreset.check_plan_support`` for every
   linear op and the head) and the lengths against the model.
2. **Allocate HBM** (:mod:`.layout`): layer regions (runs of identical layers at a constant
   stride), head, RoPE table, KV cache, input and logits, interleaved over all channels; weight
   tiles sized to one of ``layout.WEIGHT_SLOTS`` (2: double buffering) weight-buffer slots.
3. For every **length bucket** (prefill: multiples of the chunk ``tt`` = 128 or the largest
   power of two whose activations fit; decode: multiples of 16 of the context), **allocate the
   on-chip buffers** and **lower** the step (:mod:`.lower`): chunks x layer-run loops x tiled ops.
4. **Assign dependency tokens** and materialise barriers (:mod:`.sync`).
5. **Prove deadlock freedom** of every template (:func:`.sync.check_deadlock`).

The storage report (:func:`storage_report`) counts the bytes of one plain program per length
(every prefill length and decode context 1..max_len, unrolled, no loops or registers) with the
same lowering, analytically, against the templates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from hwflow.compiler.batch import batch_engine, check_batch, lower_batched_decode
from hwflow.compiler.layout import HbmLayout, place_program, plan_hbm
from hwflow.compiler.lower import BufferPlan, lower_step, plan_buffers
from hwflow.compiler.parallel import Board, add_reduce_region
from hwflow.compiler.sync import assign_tokens, check_deadlock
from hwflow.compress import check_keys
from hwflow.config import CompressionPlan, HardwarePreset, LinearQuant, ModelConfig
from hwflow.costs import effective_nm
from hwflow.errors import CapacityError, ConfigError, ProgramError, UnsupportedError
from hwflow.isa import ISA_VERSION, Instr, Program, Template, Unit, loop_spans, spec

__all__ = ["DECODE_BUCKET", "PREFILL_BUCKET", "Compiled", "compile_model", "storage_report"]

PREFILL_BUCKET = 128  #: FlightLLM: prefill lengths round up to multiples of 128
DECODE_BUCKET = 16  #: FlightLLM: decode contexts round up to multiples of 16


@dataclass(frozen=True)
class Compiled:
    """A compiled program with what the compiler knows about it."""

    program: Program
    layout: HbmLayout
    tt: int
    seconds: float
    batch: int = 1  #: sequences a decode step serves (:mod:`.batch`)


def _chunk_rows(cfg: ModelConfig, hw: HardwarePreset, max_len: int, rotated: bool = False) -> int:
    """Prefill chunk rows: 128, or the largest power of two whose buffers fit (>= 1)."""
    tt = PREFILL_BUCKET
    while True:
        try:
            plan_buffers(cfg, hw, tt, min(max_len, -(-max_len // tt) * tt), rotated=rotated)
            return tt
        except CapacityError:
            if tt == 1:
                raise
            tt //= 2


def _check(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    max_len: int,
    quant: dict[tuple[int, str], LinearQuant],
) -> None:
    check_keys(cfg, plan)  # rotated keys: RoPE and a power-of-two head_dim
    if not 1 <= max_len <= cfg.max_positions:
        raise ConfigError(
            f"max_len = {max_len} must lie in 1..{cfg.max_positions} ({cfg.name}'s "
            "max_position_embeddings)"
        )
    if cfg.sliding_window and cfg.sliding_window < max_len:
        raise UnsupportedError(
            f"{cfg.name}: sliding_window {cfg.sliding_window} < max_len {max_len} unsupported "
            f"(use max_len <= {cfg.sliding_window})"
        )
    for (li, op), q in quant.items():
        try:
            hw.check_plan_support(q.bits, q.n, q.m)
        except UnsupportedError as e:
            raise UnsupportedError(f"plan {plan.name}, L{li}.{op}: {e}") from None
        block = effective_nm(hw, q.n, q.m)[1]  # the activation block one beat consumes
        if cfg.linear_shape(op)[1] % block:
            raise UnsupportedError(
                f"L{li}.{op}: reduction length {cfg.linear_shape(op)[1]} is not a multiple of "
                f"the {block}-wide activation block of preset {hw.name}"
            )
        _group_blocks(q.group, block, hw.name, f"plan {plan.name}, L{li}.{op}")
    h = plan.head()
    try:
        hw.check_plan_support(h.bits, h.n, h.m)
    except UnsupportedError as e:
        raise UnsupportedError(f"plan {plan.name}, head: {e}") from None
    _group_blocks(h.group, hw.sparsity.m if h.dense else h.m, hw.name, f"plan {plan.name}, head")
    for q, where in (*((q, f"L{li}.{op}") for (li, op), q in quant.items()),
                     (h, "head")):  # fmt: skip
        if not q.dense:  # the engine instruction carries M (dense rows are cut by the preset)
            _fits("MM", "m", q.m, f"plan {plan.name}, {where}: {q.n}:{q.m} sparsity, M")
        if q.group is not None:  # and log2 of the weight group
            _fits("MM", "wgroup", q.group.bit_length() - 1,
                  f"plan {plan.name}, {where}: weight group {q.group}, log2")  # fmt: skip
    if plan.attention.pattern == "block":  # the softmax instruction carries the block mask
        for key, name in (("block", "blk"), ("local_blocks", "local"), ("global_blocks", "glob")):
            _fits("SFU", name, getattr(plan.attention, key), f"plan {plan.name}: attention.{key}")


def _group_blocks(group: int | None, block: int, preset: str, where: str) -> None:
    """UnsupportedError unless a weight group is whole beats: the DSP chain applies a group's
    multiplier at a reduction point after the group's last block (numerics, weights)."""
    if group is not None and group % block:
        raise UnsupportedError(
            f"{where}: weight group {group} is not a multiple of the {block}-wide activation "
            f"block of preset {preset} (allowed: multiples of {block})"
        )


def _fits(op: str, name: str, value: int, what: str) -> None:
    """UnsupportedError unless ``value`` fits the field ``name`` of instruction ``op``."""
    bits = spec(op).index[name].bits
    if not 0 <= value < 1 << bits:
        raise UnsupportedError(
            f"{what} = {value} does not fit the {bits}-bit {op}.{name} instruction field "
            f"(allowed: 0..{(1 << bits) - 1})"
        )


def _template(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    layout: HbmLayout,
    phase: str,
    tt: int,
    lo: int,
    hi: int,
    par: Board | None = None,
) -> Template:
    rope_rows = hi - lo + 1 if phase == "decode" else tt  # decode: the bucket's RoPE rows
    bp: BufferPlan = plan_buffers(cfg, hw, tt, hi, rope_rows, rotated=layout.rotated)
    nchunks = -(-hi // tt) if phase == "prefill" else 1
    instrs = assign_tokens(lower_step(cfg, plan, hw, layout, bp, phase, nchunks, lo, par))
    check_deadlock(instrs)
    info = {**bp.info(), "chunks": nchunks}
    return Template(phase, lo, hi, instrs, MappingProxyType(info))


def _batched_template(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    layout: HbmLayout,
    batch: int,
    lo: int,
    hi: int,
) -> Template:
    """The decode template of contexts ``lo..hi`` for up to ``batch`` sequences (:mod:`.batch`);
    CapacityError naming the batch when its buffers do not fit."""
    cols = max(r for _, r, _ in layout.head.tiles)  # the widest head tile's logit columns
    bp = plan_buffers(cfg, hw, batch, hi, 1, score_rows=1, head_rows=batch, logit_cols=cols)
    engine = batch_engine(cfg, plan, hw, batch)
    instrs = assign_tokens(lower_batched_decode(cfg, plan, layout, bp, lo, engine))
    check_deadlock(instrs)
    info = {**bp.info(), "chunks": 1, "batch": batch, "engine": engine}
    return Template("decode", lo, hi, instrs, MappingProxyType(info))


def compile_model(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    max_len: int | None = None,
    batch: int = 1,
    *,
    par: Board | None = None,
    quant: dict[tuple[int, str], LinearQuant] | None = None,
) -> Compiled:
    """Compile every prefill length and decode context 1..``max_len`` (default: the model's
    ``max_position_embeddings``, capped at 2048) into bucket templates (see module doc); with
    ``batch`` B > 1, B KV caches and decode templates for up to B sequences (:mod:`.batch`).

    Multi-board (:mod:`hwflow.compiler.partition` calls it): ``cfg`` is one board's sub-model,
    ``par`` its place in the system and ``quant`` its layers' compression (default: the plan
    resolved on ``cfg``). Batches run on one board."""
    t0 = time.perf_counter()
    max_len = max_len if max_len is not None else min(cfg.max_positions, 2048)
    check_batch(batch)
    if batch > 1 and par is not None and par.boards > 1:
        raise UnsupportedError(
            f"batch {batch} on {par.boards} boards: batched decode runs on one board"
        )
    quant = quant if quant is not None else plan.resolve(cfg)
    _check(cfg, plan, hw, max_len, quant)
    rotated = plan.method.keys == "rotated"
    if rotated and (batch > 1 or (par is not None and par.boards > 1)):
        what = f"batch {batch}" if batch > 1 else f"{par.boards} boards"  # type: ignore[union-attr]
        raise UnsupportedError(
            f"plan {plan.name}: method.keys 'rotated' on {what} is not implemented (rotated "
            "keys compile for one sequence on one board; use method.keys 'static')"
        )
    where = f"{cfg.name} / {plan.name} on preset {hw.name} at max_len {max_len}"
    if par is not None and par.boards > 1:
        where = f"board {par.index} of {par.boards} ({par.mode} parallel): {where}"
    if batch > 1:
        where += f", batch {batch}"
    try:
        layout = plan_hbm(cfg, quant, plan.head(), hw, max_len, batch, rotated)
        if par is not None and par.tensor:
            layout = add_reduce_region(layout, cfg, hw)
        tt = _chunk_rows(cfg, hw, max_len, rotated)
        templates: list[Template] = []
        for lo in range(1, max_len + 1, tt):
            hi = min(lo + tt - 1, max_len)
            templates.append(_template(cfg, plan, hw, layout, "prefill", tt, lo, hi, par))
        for lo in range(1, max_len + 1, DECODE_BUCKET):
            hi = min(lo + DECODE_BUCKET - 1, max_len)
            if batch > 1:
                templates.append(_batched_template(cfg, plan, hw, layout, batch, lo, hi))
            else:
                templates.append(_template(cfg, plan, hw, layout, "decode", 1, lo, hi, par))
    except CapacityError as e:
        raise CapacityError(f"{where}: {e}") from None
    except ProgramError as e:
        if "does not fit" not in str(e):  # not a field range (isa.make): a compiler bug
            raise
        # an instruction field too narrow for this model (a 16-bit extent, a 40-bit address)
        raise UnsupportedError(f"{where}: exceeds the instruction set: {e}") from None
    big = max(templates, key=lambda t: t.nbytes)
    if big.nbytes > hw.buffers.bytes("instr"):
        raise CapacityError(
            f"{where}: the {big.phase} template for {big.lo}..{big.hi} needs {big.nbytes:,} "
            f"bytes of instructions but buffers.instr_kib holds {hw.buffers.bytes('instr'):,}"
        )
    header = {
        "isa_version": ISA_VERSION,
        "preset": hw.name,
        "preset_digest": hw.digest,
        "model": cfg.name,
        "plan": plan.name,
        "max_len": max_len,
        "prefill_bucket": tt,
        "decode_bucket": DECODE_BUCKET,
        "runs": [list(r) for r in layout.runs],
        "hbm_bytes": layout.total,
    }
    if par is not None and par.boards > 1:
        header["board"] = par.info()
    if batch > 1:  # absent at batch 1: a batch-1 program is the same file as before batches
        header["batch"] = batch
    try:
        code = place_program(layout.total, templates, hw)
    except CapacityError as e:
        raise CapacityError(f"{where}: {e}") from None
    prog = Program(MappingProxyType(header), (*layout.regions, code), tuple(templates))
    return Compiled(prog, layout, tt, time.perf_counter() - t0, batch)


def _unrolled_bytes(instrs: tuple[Instr, ...], counts: dict[int, int] | None = None) -> int:
    """Bytes of the template fully unrolled as a plain program (SYS register/loop instructions
    vanish into immediates; one END stays). ``counts`` overrides loop trip counts by LOOP pc."""
    spans = loop_spans(instrs)
    counts = counts or {}

    def walk(lo: int, hi: int) -> int:
        total, pc = 0, lo
        while pc < hi:
            ins = instrs[pc]
            if ins.op == "LOOP":
                end = spans[pc]
                total += counts.get(pc, ins["count"]) * walk(pc + 1, end)
                pc = end + 1
                continue
            if ins.unit != Unit.SYS:
                total += 4 * ins.spec.words
            pc += 1
        return total

    return walk(0, len(instrs)) + 4


def storage_report(compiled: Compiled) -> dict[str, Any]:
    """Instruction storage of the templates vs one plain unrolled program per length, and vs
    one unrolled program per bucket (FlightLLM's scheme, without our loops).

    A per-length program for prefill length L (decode context c) is the same lowering with the
    chunk loop run ceil(L / tt) times (once) and every layer loop unrolled; its bytes are the
    unrolled template's, computed analytically from the template structure.
    """
    prog = compiled.program
    max_len = prog.header["max_len"]
    tt = compiled.tt
    per_length = 0
    for t in prog.templates:
        spans = loop_spans(t.instrs)
        outer = min(spans)  # the chunk loop is the first LOOP of a template
        if t.phase == "prefill":
            for n in range(t.lo, t.hi + 1):
                per_length += _unrolled_bytes(t.instrs, {outer: -(-n // tt)})
        else:
            per_length += (t.hi - t.lo + 1) * _unrolled_bytes(t.instrs)
    ours = prog.instr_bytes
    # FlightLLM-style: one program per bucket, but without loops (layers unrolled)
    bucketed = sum(_unrolled_bytes(t.instrs) for t in prog.templates)
    counts = {u.name: 0 for u in Unit}
    for t in prog.templates:
        for ins in t.instrs:
            counts[ins.unit.name] += 1
    return {
        "templates": len(prog.templates),
        "template_bytes": ours,
        "largest_template_bytes": max(t.nbytes for t in prog.templates),
        "per_length_programs": 2 * max_len,
        "per_length_bytes": per_length,
        "ratio": per_length / ours,
        "bucketed_unrolled_bytes": bucketed,
        "ratio_bucketed_unrolled": per_length / bucketed,
        "instructions_per_unit": counts,
    }
