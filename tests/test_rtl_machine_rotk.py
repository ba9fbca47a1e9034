"""Rotated keys (issue 14) on the whole machine (hwflow.hw.machine) on Verilator.

tiny-llama with the w8a8-rotk plan (q/k linears at INT16, SFU ropeq/ropek: RoPE at INT16, the
Hadamard transform per head, q requantized per head, k quantized per (token, KV head) with
its factor in the KV cache; qk with the keys' factors, MM/MV ``brow``): the HBM image equals
the functional simulator's after every step. Shares the machine's build (one xdist group)
with tests/test_rtl_machine.py.
"""

from __future__ import annotations

import pytest

from hwflow.config import load_hw, load_model, load_plan

pytestmark = [pytest.mark.rtl, pytest.mark.xdist_group("rtl-tiny-machine")]


def test_cosim_tiny_llama_rotated_keys_is_bit_exact() -> None:
    """w8a8-rotk, prefill 8 + decode 2: bit-exact after every step, every unit built."""
    from hwflow.hw.machine.cosim import cosim_model

    res = cosim_model(load_model("tiny-llama"), load_plan("w8a8-rotk"), load_hw("tiny"), 8, 2)
    assert res["missing_units"] == [] and not res["absent_unit_used"]
    assert res["bit_exact"], res["mismatch"]


def test_cosim_rotated_keys_fails_on_a_flipped_weight_bit() -> None:
    """The comparison is live on this plan too: one flipped weight bit in the RTL's image
    makes the run differ from the functional simulator."""
    from hwflow.hw.machine.cosim import cosim_model

    res = cosim_model(
        load_model("tiny-llama"), load_plan("w8a8-rotk"), load_hw("tiny"), 2, 0,
        flip_weight_bit=True,
    )  # fmt: skip
    assert not res["bit_exact"]
