"""The step graph: ops, shapes, bytes and MACs."""

from __future__ import annotations

import numpy as np
import pytest

from hwflow.config import AttentionSparsity, load_model, load_plan
from hwflow.errors import ConfigError
from hwflow.model import attention_mask, linear_bytes, step_graph


def test_llama_decode_graph_counts():
    cfg, plan = load_model("llama2-7b"), load_plan("w8a8")
    g = step_graph(cfg, plan, "decode", 1, past=99)
    assert g.keys == 100
    kinds = [o.kind for o in g.ops if o.layer == 0]
    assert kinds == [
        "norm",
        "linear",
        "linear",
        "linear",
        "rope",
        "rope",
        "kv_write",
        "scores",
        "softmax",
        "pv",
        "linear",
        "add",
        "norm",
        "linear",
        "linear",
        "lut",
        "mul",
        "linear",
        "add",
    ]
    # dense INT8: one byte per weight plus 3 requant bytes per output channel
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
    params = 3 * (4 * 4096 + 2 * 11008 + 4096)
    head = 32000 * 4096
    head_params = 3 * 32000  # the head requantizes its INT32 logits per channel too
    assert g.weight_bytes == 32 * (per_layer + params) + head + head_params
    assert g.macs == 32 * (per_layer + 2 * 32 * 100 * 128) + head
    # an INT8 KV cache: read K and V of 100 positions, write one
    assert g.kv_bytes == 32 * (2 * 32 * 100 * 128 + 2 * 32 * 128)


def test_sparse_int4_bytes():
    lq = load_plan("flightllm").resolve(load_model("llama2-7b"))[(5, "up")]
    assert (lq.bits, lq.n, lq.m) == (4, 4, 16)
    b = linear_bytes(11008, 4096, lq, bias=False)
    kept = 11008 * 4096 // 4
    assert b == {"values": kept // 2, "indices": kept // 2, "params": 3 * 11008, "scales": 0}


def test_opt_graph_has_no_gate_or_rope_and_has_bias():
    cfg = load_model("opt-6.7b")
    g = step_graph(cfg, load_plan("w4a8"), "prefill", 16)
    names = {o.name.split(".")[-1] for o in g.ops}
    assert "gate" not in names and "rope_q" not in names and "mul" not in names
    up = g.by_name("L0.up")
    assert up.weight_bytes == sum(linear_bytes(16384, 4096, up.quant, bias=True).values())


def test_gqa_shapes():
    g = step_graph(load_model("mistral-7b"), load_plan("w8a8"), "decode", 1, past=10)
    assert g.by_name("L0.k").rows == 1024
    s = g.by_name("L0.scores")
    assert (s.heads, s.rows, s.k) == (32, 11, 128)
    assert s.kv_bytes == 8 * 11 * 128  # each of the 8 KV heads read once


def test_masks():
    cfg = load_model("tiny-llama")
    causal = attention_mask(cfg, AttentionSparsity(), "prefill", 5, 0)
    assert (causal == np.tril(np.ones((5, 5), bool))).all()
    blk = AttentionSparsity(pattern="block", block=2, local_blocks=2, global_blocks=1)
    m = attention_mask(cfg, blk, "prefill", 8, 0)
    # query 7 (block 3) sees block 0 (global), blocks 2, 3 (local), not block 1
    assert m[7].tolist() == [True, True, False, False, True, True, True, True]
    # decode attention is dense whatever the plan
    assert attention_mask(cfg, blk, "decode", 1, 7).all()


def test_block_sparse_macs_count_kept_tiles():
    """384 tokens of tiny-llama (4 heads of 16) in 64 x 64 tiles: 6 query x 6 key blocks.
    Causal (w8a8, dense attention): the tiles with key block <= query block, 1 + 2 + ... + 6 =
    21 whole tiles (384 = 6 x 64), every entry computed as a tiled engine does. flightllm's
    block pattern (1 global block, 4 local ones, own included) keeps of those the key blocks
    kb = 0 or qb - kb < 4: only query block 5's key block 1 is dropped, 20 tiles. Each entry
    costs head_dim 16 MACs in each of the 4 heads; the dense count is 384 x 384 entries."""
    cfg = load_model("tiny-llama")
    tile, per_entry = 64 * 64, 4 * 16
    dense = step_graph(cfg, load_plan("w8a8"), "prefill", 384).by_name("L0.scores")
    assert dense.macs == 21 * tile * per_entry
    assert dense.dense_macs == 384 * 384 * per_entry
    sparse = step_graph(cfg, load_plan("flightllm"), "prefill", 384).by_name("L0.scores")
    assert sparse.macs == 20 * tile * per_entry
    assert sparse.dense_macs == dense.dense_macs


@pytest.mark.parametrize(
    ("phase", "tokens", "past", "msg"),
    [
        ("decode", 2, 0, "a decode step has one token"),
        ("prefill", 0, 0, "tokens >= 1"),
        ("verify", 1, 0, "phase 'verify' unknown"),
        ("prefill", 600, 0, "exceed tiny-llama's max_position_embeddings 512"),
    ],
)
def test_bad_steps(phase, tokens, past, msg):
    with pytest.raises(ConfigError, match=msg):
        step_graph(load_model("tiny-llama"), load_plan("w8a8"), phase, tokens, past)


@pytest.mark.parametrize("plan_name", ["w8a8", "flightllm", "w4a8-2of4"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_graph_bytes_equal_compressed_sizes(name, plan_name):
    """The graph's streamed bytes are exactly what compression stores (packed values, indices,
    requant params, INT32 biases, including the OPT head's folded LayerNorm bias)."""
    from hwflow.compress import quantize_model, random_weights

    cfg, plan = load_model(name), load_plan(plan_name)
    qm = quantize_model(cfg, plan, random_weights(cfg, 0))
    g = step_graph(cfg, plan, "decode", 1, 3)
    for op in g.ops:
        if op.kind not in ("linear", "head"):
            continue
        ql = qm.linears[op.name]
        size = sum(v.size for v in ql.packed().values())
        size += 3 * ql.values.shape[0] * (ql.mult is not None)
        size += 4 * (ql.bias.size if ql.bias is not None else 0)
        assert op.weight_bytes == size, op.name
