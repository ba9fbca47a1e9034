"""Engine operations as port traffic: what a driver sends and what the engine must answer.

A :class:`MatmulOp` is ``out[T, R] = x[T, K] @ W[R, K]^T`` with W compressed N:M and quantized
to INT``bits`` by :mod:`hwflow.numerics` (the same functions the compiler and the functional
simulator use). :func:`op_beats` lays it out the way :mod:`hwflow.hw.engine` consumes it
(row groups of ``chains*C/N`` rows, row ``l`` of a group on segment ``l // chains`` of chain
``l % chains``; token passes of ``rows`` lanes, K/M beats each); :func:`op_expected` is the
reference answer, computed only with :func:`hwflow.numerics.matmul_int`,
:func:`~hwflow.numerics.nm_expand` and :func:`~hwflow.numerics.requantize` (after
:func:`~hwflow.hw.params.dual_act_clamp` on a dual-INT8 engine), and :func:`op_words` the drain
words the engine sends for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import numpy as np

from hwflow import numerics as nx
from hwflow.hw.params import EngineParams, dual_act_clamp

__all__ = [
    "MatmulOp",
    "make_op",
    "op_beats",
    "op_expected",
    "op_params",
    "op_results",
    "op_words",
    "param_writes",
    "per_token_requantize",
]


@dataclass(frozen=True)
class MatmulOp:
    """One engine operation with its operands (weights compressed, activations INT8)."""

    x: np.ndarray  #: [tokens, k] int8 activations
    values: np.ndarray  #: [rows, k/M*n] int8 kept weight codes
    indices: np.ndarray  #: [rows, k/M*n] uint8 in-block indices
    n: int
    bits: int
    raw: bool
    mult: np.ndarray  #: [rows] requantization multipliers
    shift: np.ndarray  #: [rows] shifts
    bias: np.ndarray  #: [rows] INT32 biases
    tmult: np.ndarray | None = None  #: [tokens] per-token multipliers (per_token engines)
    tshift: np.ndarray | None = None  #: [tokens] per-token shifts
    group: int | None = None  #: weight group G (inputs per group multiplier), None: none
    gmult: np.ndarray | None = None  #: [rows, k/G] group multipliers (1..255)

    @property
    def tokens(self) -> int:
        return self.x.shape[0]

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    @property
    def k(self) -> int:
        return self.x.shape[1]


def make_op(
    p: EngineParams,
    rng: np.random.Generator,
    *,
    tokens: int,
    rows: int,
    k: int,
    n: int,
    bits: int,
    raw: bool = False,
    extreme: bool = False,
    group: int | None = None,
) -> MatmulOp:
    """A random op; ``extreme`` uses full-scale activations (-128/127) and weights (+-qmax);
    ``group``: random group multipliers per row and ``group`` inputs (a multiple of M).

    A raw op (accumulators out, the LM head) has one token: the engine returns raw values on
    token lane 0 only."""
    if raw and tokens != 1:
        raise ValueError(f"a raw op has one token, got {tokens}")
    m = p.m
    w = rng.standard_normal((rows, k))
    mask = nx.nm_prune_mask(w, n, m)
    codes, _ = nx.quantize_weight(w, bits, mask)
    if extreme:
        codes = np.where(mask, np.where(w >= 0, nx.qmax(bits), -nx.qmax(bits)), 0).astype(np.int8)
        x = rng.choice(np.array([-128, 127], dtype=np.int8), size=(tokens, k))
    else:
        x = rng.integers(-128, 128, size=(tokens, k), dtype=np.int8)
    values, indices = nx.nm_compress(codes, mask, n, m)
    # requantization scales around the accumulator's spread so outputs use the INT8 range
    spread = 128 * nx.qmax(bits) * np.sqrt(k * n / m) + 1
    mult, shift = nx.quant_multiplier(rng.uniform(0.3, 3.0, size=rows) * 127 / spread)
    bias = rng.integers(-(2**20), 2**20, size=rows)
    if group is not None:
        gm = rng.integers(1, nx.GROUP_MULT_MAX + 1, size=(rows, k // group))
        mult, shift = nx.quant_multiplier(np.asarray(mult) / (2.0 ** np.asarray(shift)) / 128)
        return MatmulOp(x, values, indices, n, bits, raw, np.asarray(mult), np.asarray(shift),
                        bias, group=group, gmult=gm)  # fmt: skip
    if not p.per_token:
        return MatmulOp(x, values, indices, n, bits, raw, np.asarray(mult), np.asarray(shift), bias)
    # per token: the per-row scale leaves INT32 values ~2**12 x the INT8 range, the per-token
    # scale brings them back (~ 2**-12, with a spread that also saturates)
    mult, shift = nx.quant_multiplier(rng.uniform(0.3, 3.0, size=rows) * 127 * 2**12 / spread)
    tmult, tshift = nx.quant_multiplier(rng.uniform(0.3, 3.0, size=tokens) * 2.0**-12)
    return MatmulOp(
        x,
        values,
        indices,
        n,
        bits,
        raw,
        np.asarray(mult),
        np.asarray(shift),
        bias,
        np.atleast_1d(tmult),
        np.atleast_1d(tshift),
    )


def _groups(p: EngineParams, op: MatmulOp) -> tuple[int, int, int]:
    rpb = p.rows_per_beat(op.n)
    return rpb, ceil(op.rows / rpb), ceil(op.tokens / p.rows)


def op_results(p: EngineParams, op: MatmulOp) -> int:
    """Row-group results of the op (row groups x token passes), in output order."""
    _, groups, passes = _groups(p, op)
    return groups * passes


def op_beats(p: EngineParams, op: MatmulOp, first_result: int = 0) -> list[dict]:
    """The op's beats in issue order (payload dicts for :func:`hwflow.hw.pack.encode`).

    Result r of the op is requantized with parameter entry ``(first_result + r) % depth``."""
    c, m, n = p.chain_length, p.m, op.n
    if op.n not in p.n_modes or op.bits not in p.weight_bits or op.k % m:
        raise ValueError(f"op N={op.n} bits={op.bits} K={op.k} not runnable on {p}")
    rpb, groups, passes = _groups(p, op)
    per = c // n
    nsel, wsel = p.n_modes.index(n), p.weight_bits.index(op.bits)
    dense = n == m
    blocks = op.k // m
    beats = []
    for g in range(groups):
        for q in range(passes):
            act_rows = []
            for t in range(p.rows):
                tok = q * p.rows + t
                act_rows.append(op.x[tok] if tok < op.tokens else np.zeros(op.k, np.int8))
            for b in range(blocks):
                wval, widx = [], []
                for ch in range(p.chains):
                    vals = np.zeros(c, np.int8)
                    idxs = np.zeros(c, np.uint8)
                    for s in range(per):
                        r = g * rpb + s * p.chains + ch
                        if r < op.rows:
                            vals[s * n : (s + 1) * n] = op.values[r, b * n : (b + 1) * n]
                            if not dense:  # dense indices are implicit: send zeros
                                idxs[s * n : (s + 1) * n] = op.indices[r, b * n : (b + 1) * n]
                    wval.append(int.from_bytes(nx.pack_bits(vals, op.bits).tobytes(), "little"))
                    widx.append(
                        int.from_bytes(nx.pack_bits(idxs, p.index_bits).tobytes(), "little")
                    )
                tok_scale = {}
                if p.per_token:  # padded token lanes: multiplier 0
                    toks = [q * p.rows + t for t in range(p.rows)]
                    has = op.tmult is not None and not op.raw
                    tok_scale = {
                        "tmult": [int(op.tmult[k]) if has and k < op.tokens else 0 for k in toks],
                        "tshift": [int(op.tshift[k]) if has and k < op.tokens else 0 for k in toks],
                    }
                grp = {}
                if op.group is not None:  # the gmult port, valid with a group's last beat
                    gb = op.group // m
                    gm = [0] * p.chains
                    for ch in range(p.chains):
                        for s in range(per):
                            r = g * rpb + s * p.chains + ch
                            if r < op.rows and (b + 1) % gb == 0:
                                gm[ch] |= int(op.gmult[r, b // gb]) << (8 * s)
                    grp = {"wgrp": 1, "glast": int((b + 1) % gb == 0), "gmult": gm}
                beats.append(
                    {
                        **tok_scale,
                        **grp,
                        "act": [[int(v) for v in a[b * m : (b + 1) * m]] for a in act_rows],
                        "wval": wval,
                        "widx": widx,
                        "nsel": nsel,
                        "wsel": wsel,
                        "last": int(b == blocks - 1),
                        "raw": int(op.raw),
                        "paddr": (first_result + g * passes + q) % p.param_depth,
                    }
                )
    return beats


def op_params(p: EngineParams, op: MatmulOp) -> list[dict | None]:
    """Per result (in output order) the lane parameters it needs, None when raw."""
    rpb, groups, passes = _groups(p, op)
    out: list[dict | None] = []
    for g in range(groups):
        rows = range(g * rpb, min((g + 1) * rpb, op.rows))
        entry = None
        if not op.raw:
            entry = {
                "mult": [int(op.mult[r]) for r in rows],
                "shift": [int(op.shift[r]) for r in rows],
                "bias": [int(op.bias[r]) for r in rows],
            }
        out += [entry] * passes
    return out


def param_writes(p: EngineParams, entry: dict, result: int) -> list[dict]:
    """``p`` stream beats that store ``entry`` (lane lists) for result number ``result``."""
    w = p.param_chunk
    writes = []
    for k in range(p.param_chunks):
        lanes = slice(k * w, (k + 1) * w)
        writes.append(
            {
                "addr": result % p.param_depth,
                "chunk": k,
                **{name: entry[name][lanes] for name in ("mult", "shift", "bias")},
            }
        )
    return writes


def op_expected(p: EngineParams, op: MatmulOp) -> list[list[list[int]]]:
    """Reference results in output order: per row-group result, ``[token lane][lane]``."""
    dense_w = nx.nm_expand(op.values, op.indices, op.n, p.m)
    x = dual_act_clamp(op.x) if p.dual_int8 else op.x
    acc = nx.weight_matmul(x, dense_w, op.gmult, op.group)  # [tokens, rows]
    if op.raw:
        res = acc
    elif p.per_token:
        res = per_token_requantize(acc + op.bias[None, :], op.mult, op.shift, op.tmult, op.tshift)
    else:
        res = nx.requantize(acc + op.bias[None, :], op.mult, op.shift).astype(np.int64)
    rpb, groups, passes = _groups(p, op)
    out = []
    for g in range(groups):
        for q in range(passes):
            block = [[0] * p.lanes for _ in range(p.rows)]
            for t in range(p.rows):
                tok = q * p.rows + t
                for lane in range(rpb):
                    r = g * rpb + lane
                    if op.raw and t > 0:
                        continue  # raw results leave on token lane 0 only
                    if tok < op.tokens and r < op.rows:
                        block[t][lane] = int(res[tok, r])
                    elif r < op.rows:  # padded token lane: the engine computes W @ 0
                        block[t][lane] = (
                            0
                            if op.raw or p.per_token  # per token: the padding's multiplier is 0
                            else int(
                                nx.requantize(np.array([op.bias[r]]), op.mult[r], op.shift[r])[0]
                            )
                        )
            out.append(block)
    return out


def op_words(p: EngineParams, op: MatmulOp) -> list[list[tuple[list[int], int]]]:
    """Per result, the drain words the engine sends: ``(R values, last)`` in output order."""
    r = p.requantizers
    words = []
    for block in op_expected(p, op):
        order = p.drain_order(op.n)
        words.append(
            [
                (block[t][first : first + r], int(i == len(order) - 1))
                for i, (t, first) in enumerate(order)
            ]
        )
    return words


def per_token_requantize(
    acc: np.ndarray, mult: np.ndarray, shift: np.ndarray, tmult: np.ndarray, tshift: np.ndarray
) -> np.ndarray:
    """The per-token requantization contract under discussion, written out from the
    numerics primitives: ``saturate_8(round_shift(saturate_32(round_shift(acc * mult_c,
    shift_c)) * mult_t, shift_t))``; ``acc`` is [tokens, rows], the ``_c`` pair per row (last
    axis), the ``_t`` pair per token (first axis)."""
    acc = np.asarray(acc, dtype=np.int64)
    y = nx.saturate(nx.round_shift(acc * np.asarray(mult, np.int64), shift), 32).astype(np.int64)
    t = np.asarray(tmult, np.int64)[:, None]
    return nx.saturate(nx.round_shift(y * t, np.asarray(tshift)[:, None]), 8).astype(np.int64)
