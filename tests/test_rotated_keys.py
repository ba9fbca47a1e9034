"""Rotated keys (plan method ``keys: rotated``): the Hadamard transform, the keys' per-token
factors through the KV cache, and the refusals where the mechanism does not apply."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hwflow import numerics as nx
from hwflow.cli import main
from hwflow.compress import fold_norm_biases, quantize_model, random_weights
from hwflow.config import load_model, load_plan
from hwflow.errors import UnsupportedError
from hwflow.model import step_graph
from hwflow.reference import KVCache, _float_embed, run_float, run_int


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), np.int64)
    while h.shape[0] < n:
        h = np.kron(np.array([[1, 1], [1, -1]]), h)
    return h


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_hadamard_int_is_the_sylvester_matrix(n):
    x = np.random.default_rng(n).integers(-32768, 32768, size=(3, 5, n))
    assert np.array_equal(nx.hadamard_int(x), x @ _sylvester(n))
    # orthogonal up to n: applying it twice gives n * x
    assert np.array_equal(nx.hadamard_int(nx.hadamard_int(x)), n * x)


def test_hadamard_int_widens_narrow_inputs():
    """INT16 rows (RoPE's output) grow by log2(n) bits: the sums must not wrap."""
    x = np.full((2, 64), 32767, dtype=np.int16)
    y = nx.hadamard_int(x)
    assert y[0, 0] == 64 * 32767 and (y[:, 1:] == 0).all()


def test_hadamard_int_refuses_other_lengths():
    with pytest.raises(ValueError, match="Hadamard length 12 must be a power of two"):
        nx.hadamard_int(np.zeros((2, 12), np.int64))


def _rotk():
    cfg = load_model("tiny-llama")
    w = random_weights(cfg, 0)
    return cfg, w, quantize_model(cfg, load_plan("w8a8-rotk"), w)


def test_key_factors_travel_with_the_cache():
    """Prefill of 20 tokens equals prefill of 19 then one decode step, bit for bit: the last
    token's logits, K, V and every key's row factor (the decode step reads the prefill's
    factors from the cache and writes its own)."""
    cfg, _, qm = _rotk()
    ids = np.random.default_rng(5).integers(cfg.vocab, size=20)
    full = run_int(
        qm, step_graph(cfg, qm.plan, "prefill", 20), qm.embed(ids, 0), KVCache.empty(cfg)
    )
    kv = KVCache.empty(cfg)
    run_int(qm, step_graph(cfg, qm.plan, "prefill", 19), qm.embed(ids[:19], 0), kv)
    last = run_int(qm, step_graph(cfg, qm.plan, "decode", 1, 19), qm.embed(ids[19:], 19), kv)
    assert (full.logits == last.logits).all()
    for li in range(cfg.layers):
        assert (full.kv.k[li][:, :20] == kv.k[li][:, :20]).all()
        assert (full.kv.kf[li][:, :20] == kv.kf[li][:, :20]).all()
        m = kv.kf[li][:, :20, 0]  # 15-bit mantissas of every written key
        assert ((m >= 1 << 14) & (m < 1 << 15)).all()


def test_rotated_scores_track_float():
    """The integer scores (Q8 units of log2) of rotated q and per-token k match the float64
    model's ``q . k / sqrt(hd)``: rotating both by the same orthogonal matrix leaves them
    unchanged, so only rounding separates the two."""
    cfg, w, qm = _rotk()
    ids = np.random.default_rng(3).integers(cfg.vocab, size=24)
    g = step_graph(cfg, qm.plan, "prefill", len(ids))
    ri = run_int(qm, g, qm.embed(ids, 0), KVCache.empty(cfg))
    rf = run_float(
        cfg, fold_norm_biases(cfg, w), g, _float_embed(cfg, w, ids, 0),
        KVCache.empty(cfg, np.float64), all_rows=True,
    )  # fmt: skip
    causal = np.tril(np.ones((len(ids), len(ids)), bool))
    for li in range(cfg.layers):
        z = ri.tensors[f"L{li}.s"][:, causal] / 256 / math.log2(math.e)
        assert nx.sqnr_db(rf.tensors[f"L{li}.s"][:, causal], z) > 22.0  # measured 36.5, 25.9


def test_a_massive_key_token_keeps_the_others():
    """One token's key 1000x the rest (an attention-sink token): a per-token scale keeps every
    other key's codes, where one scale per head would round them to zero."""
    rng = np.random.default_rng(0)
    k = rng.integers(-300, 300, size=(2, 6, 16))
    k[:, 0] *= 100
    kq, (m, e) = nx.quant_rows(nx.hadamard_int(k))
    back = kq * (m * 2.0 ** -e.astype(np.float64))[..., None] / 127
    rel = np.abs(back - nx.hadamard_int(k)).max(-1) / np.abs(nx.hadamard_int(k)).max(-1)
    assert rel.max() < 1 / 127  # half a step of each row's own scale, plus the factor's
    assert (np.abs(kq[:, 1:]).max(-1) == 127).all()


def test_refusals(capsys):
    cfg = load_model("tiny-opt")
    with pytest.raises(UnsupportedError, match="needs RoPE positions; tiny-opt has 'learned'"):
        quantize_model(cfg, load_plan("w8a8-rotk"), random_weights(cfg, 0))
    odd = load_model("tiny-llama").model_copy(update={"head_dim": 24})
    with pytest.raises(UnsupportedError, match=r"power-of-two head_dim .* has 24"):
        quantize_model(odd, load_plan("w8a8-rotk"), {})
    # the compiler takes them since ISA v5 (tests/test_rotated_keys_isa.py); OPT it refuses
    argv = ["compile", "--model", "tiny-opt", "--hw", "tiny", "--plan", "w8a8-rotk"]
    assert main(argv) == 2
    assert "method.keys 'rotated' needs RoPE positions" in capsys.readouterr().err
