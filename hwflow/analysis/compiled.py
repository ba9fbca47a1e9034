"""What ``hwflow compile`` reports about a compiled program, cached with the program.

:func:`summary` gathers the figures (instruction storage, decode HBM bytes per token from the
expanded program, HBM layout, quality vs float64 for models small enough);
:func:`compile_with_summary` returns the program bytes and the summary from the cache when the
same inputs and code compiled them before (:mod:`hwflow.cache`), else compiles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from hwflow import cache
from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.isa import XFER_KINDS, Program, Runtime, expand

__all__ = ["compile_with_summary", "decode_hbm_bytes", "summary"]


def decode_hbm_bytes(program: Program) -> dict[str, int]:
    """HBM bytes one decode step moves at the longest context, by transfer kind (from the
    expanded program, so it is what the machine does, not an estimate); a batched program's
    step serves its whole batch, every sequence at that context."""
    ctx = program.header["max_len"]
    batch = int(program.header.get("batch", 1))
    rt = Runtime.batch([ctx - 1] * batch)
    out = dict.fromkeys(XFER_KINDS, 0)
    for c in expand(program.select("decode", rt), rt):
        if c.op in ("LD", "ST"):
            out[XFER_KINDS[c["kind"]]] += max(c["rows"], 0) * c["row_bytes"]
    out["total"] = sum(out[k] for k in XFER_KINDS)
    out["context"] = ctx
    return out


def summary(cfg: ModelConfig, plan: CompressionPlan, hw: HardwarePreset, compiled: Any) -> dict:
    """The figures ``hwflow compile`` prints, JSON-safe."""
    from hwflow.compiler import storage_report
    from hwflow.reference import QUALITY_MAX_PARAMS, quality, quality_sample

    st = storage_report(compiled)
    per_channel = compiled.layout.channel_bytes(hw.hbm.channels, hw.hbm.interleave_bytes)
    out: dict[str, Any] = {
        "model": cfg.name,
        "plan": plan.name,
        "preset": hw.name,
        "max_len": compiled.program.header["max_len"],
        "prefill_bucket": compiled.tt,
        "layer_runs": [list(r) for r in compiled.layout.runs],
        **st,
        "decode_hbm_bytes_per_token": decode_hbm_bytes(compiled.program),
        "hbm_total_bytes": compiled.layout.total,
        "hbm_channel_bytes_min_max": [min(per_channel), max(per_channel)],
        "compile_seconds": compiled.seconds,
        "batch": compiled.batch,
    }
    if compiled.batch > 1:  # the step makes a token of every sequence: per token is per B
        b = compiled.batch
        step = out["decode_hbm_bytes_per_step"] = out["decode_hbm_bytes_per_token"]
        out["decode_hbm_bytes_per_token"] = {k: v if k == "context" else v // b
                                             for k, v in step.items()}  # fmt: skip
        out["decode_engine"] = compiled.program.templates[-1].info["engine"]
    out["quality"] = None
    if cfg.params <= QUALITY_MAX_PARAMS:
        import numpy as np

        from hwflow.compress import quantize_model, random_weights

        w = random_weights(cfg, 0)
        ids, decode = quality_sample(cfg, cfg.max_positions, np.random.default_rng(7))
        out["quality"] = quality(quantize_model(cfg, plan, w), w, ids, decode)
    return out


def compile_with_summary(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    max_len: int | None,
    *,
    note: Callable[[str], None] | None = None,
    batch: int = 1,
) -> tuple[bytes, dict[str, Any], bool]:
    """(program bytes, :func:`summary`, whether both came from the cache). The program is
    stored where :func:`hwflow.perf.sim.compile_cached` finds it, so ``sim`` reuses it."""
    from hwflow.compiler import compile_model
    from hwflow.perf.sim import default_max_len, program_key, program_path

    max_len = max_len if max_len is not None else default_max_len(cfg)
    key = program_key(cfg, plan, hw, max_len, batch)
    path = program_path(key)
    info = cache.read_json(path.with_suffix(".summary.json"))
    if isinstance(info, dict) and path.is_file():
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() == info.get("program_sha256"):  # else: damaged
            if note:
                note(f"compiled program and summary from the cache ({path})")
            return data, info, True
    if note:
        b = f", batch {batch}" if batch > 1 else ""
        note(f"compiling {cfg.name} / {plan.name} for {hw.name} (max_len {max_len}{b})")
    compiled = compile_model(cfg, plan, hw, max_len, batch)
    info = summary(cfg, plan, hw, compiled)
    data = compiled.program.to_bytes()
    info["program_sha256"] = hashlib.sha256(data).hexdigest()
    cache.write_bytes(path, data)
    cache.write_json(path.with_suffix(".summary.json"), info)
    return data, info, False
