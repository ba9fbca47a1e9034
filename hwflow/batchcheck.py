"""``hwflow check --batch B``: a batched program on the functional simulator, every sequence
compared bit for bit with its own batch-1 integer reference.

B sequences get prompts of different lengths (spread over the contexts the program serves, so
their decode steps run in different buckets' ranges and mostly at different positions), each
prefilled into its KV-cache slot; then ``decode_steps`` batched decode steps of all B greedy
decode one token of each; a last step runs the first B - 1 only (a batch smaller than the
program's). Every step's logits of every sequence, and at the end every sequence's KV cache,
must equal :func:`hwflow.reference.generate_int` of that sequence alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hwflow.config import CompressionPlan, HardwarePreset, ModelConfig
from hwflow.errors import ConfigError

__all__ = ["batch_prompt_lengths", "check_batch_against_reference"]


def batch_prompt_lengths(batch: int, max_len: int, decode_steps: int) -> list[int]:
    """Distinct prompt lengths of ``batch`` sequences, from 1 up to the longest that leaves
    room for the decode steps (and the extra step of B - 1 sequences); ConfigError when there
    are not that many."""
    top = max_len - decode_steps - 1
    if top < batch:
        raise ConfigError(
            f"--batch {batch} with --decode {decode_steps} needs max_len >= "
            f"{batch + decode_steps + 1} (distinct prompt lengths), got {max_len}"
        )
    if batch == 1:
        return [top]
    return [1 + (top - 1) * i // (batch - 1) for i in range(batch)]


def check_batch_against_reference(
    cfg: ModelConfig,
    plan: CompressionPlan,
    hw: HardwarePreset,
    max_len: int,
    batch: int,
    decode_steps: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Compile for ``batch`` sequences and run the check of the module doc; returns the
    figures (a mismatch is reported in them, not raised)."""
    from hwflow.compiler import compile_model
    from hwflow.compiler.layout import build_hbm_image
    from hwflow.compress import quantize_model, random_weights
    from hwflow.funcsim import FuncSim
    from hwflow.reference import generate_int

    if decode_steps < 1:
        raise ConfigError(f"--decode {decode_steps}: a batched check needs >= 1 decode step")
    comp = compile_model(cfg, plan, hw, max_len, batch)
    lengths = batch_prompt_lengths(batch, max_len, decode_steps)
    qm = quantize_model(cfg, plan, random_weights(cfg, seed))
    fs = FuncSim(comp.program, hw, cfg, comp.layout, build_hbm_image(comp.layout, qm))
    rng = np.random.default_rng(seed + 11)
    ids = [rng.integers(cfg.vocab, size=n) for n in lengths]
    extra = 1 if batch > 1 else 0  # the last step, of the first B - 1 sequences
    refs = [generate_int(qm, x, decode_steps + (extra if s < batch - 1 else 0))
            for s, x in enumerate(ids)]  # fmt: skip
    steps: list[dict[str, Any]] = []
    instrs = 0
    for s, x in enumerate(ids):
        got = fs.step("prefill", qm.embed(x, 0), 0, seq=s)
        instrs += fs.last_stats.instructions
        ok = np.array_equal(got, refs[s][0].logits[-1])
        steps.append({"phase": "prefill", "seq": s, "pos": 0, "equal": bool(ok)})
    pos = list(lengths)
    for k in range(1, decode_steps + extra + 1):
        b = batch if k <= decode_steps else batch - 1
        tok = [int(np.argmax(refs[s][k - 1].logits[-1])) for s in range(b)]
        x = np.concatenate([qm.embed(np.array([tok[s]]), pos[s]) for s in range(b)])
        got = fs.step_batch(x, pos[:b])
        instrs += fs.last_stats.instructions
        for s in range(b):
            ok = np.array_equal(got[s], refs[s][k].logits[-1])
            steps.append(
                {"phase": "decode", "seq": s, "pos": pos[s], "batch": b, "equal": bool(ok)}
            )
            pos[s] += 1
    kv_ok = []
    for s in range(batch):
        kv = refs[s][-1].kv
        kv_ok.append(all(
            np.array_equal(a, r[li][:, : pos[s]])
            for li in range(cfg.layers)
            for a, r in zip(fs.kv_cache(li, pos[s], s), (kv.k, kv.v), strict=True)
        ))  # fmt: skip
    return {
        "model": cfg.name,
        "plan": plan.name,
        "preset": hw.name,
        "max_len": max_len,
        "batch": batch,
        "prompt_lengths": lengths,
        "engine": comp.program.templates[-1].info.get("engine", "MV"),
        "steps": steps,
        "kv_equal": kv_ok,
        "instructions": instrs,
        "bit_exact": all(st["equal"] for st in steps) and all(kv_ok),
    }
