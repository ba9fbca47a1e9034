"""``hwflow rtl`` / ``hwflow synth`` and the generation manifest."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from amaranth.hdl import Shape

from hwflow.cli import main
from hwflow.config import load_hw
from hwflow.errors import UnsupportedError
from hwflow.hw.generate import write_rtl
from hwflow.hw.params import EngineParams
from hwflow.hw.synth import _cascade_links, parse_stat


@pytest.fixture(scope="module")
def rtl_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("rtl")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["rtl", "--hw", "tiny", "-o", str(out)])
    return out, code, buf.getvalue()


@pytest.mark.rtl
def test_rtl_command_writes_linted_verilog(rtl_out: tuple[Path, int, str]) -> None:
    out, code, text = rtl_out
    assert code == 0, text
    assert text.count("lint: verilator --lint-only -Wall clean") == 2
    assert (out / "hwflow_tiny_mv.v").is_file() and (out / "hwflow_tiny_mpe.v").is_file()


# The tiny engines' manifest parameters, worked out by hand from mappings/hw/tiny.yaml (not read
# back from EngineParams, which writes the manifest):
# * mv: 2 chains x 16 DSP48E2 stages (48-bit accumulators), 2 requantizers; mpe: 2 token rows
#   sharing each DSP (dual INT8), otherwise the same; N:16 with N in 2, 4, 8, 16; INT2/3/4/8.
# * lanes: rows of a row group at the smallest N: 2 chains x 16 / 2 = 16. DSPs: 2 x 16 = 32
#   (mpe: 2 rows x 32 / 2 per DSP = 32).
# * drain words of a row group at N: token rows x (2 x 16 / N) lanes / 2 requantizers:
#   mv N = 2: 16 / 2 = 8, N = 4: 4, N = 8: 2, N = 16: 1; mpe (2 token rows) twice that.
# * latency, the stages of the hwflow.costs module doc: operands 2 + product 1 + cascade 16
#   + accumulator 1 + capture 1 + requantizer 3 + output FIFO 1 = 25.
# * output FIFO: latency + the largest drain: mv 25 + 8 = 33, mpe 25 + 16 = 41.
# * parameter memory: param_kib 16 = 16384 B / (16 lanes x 8 B per entry) = 128 entries.
# * dual-INT8 field: the lower token's chain sum reaches 16 x 128 x 127 = 260,096 < 2**18,
#   so 18 magnitude bits + 1 guard bit: the upper token starts at bit 19.
_TINY_COMMON = {"preset": "tiny", "chains": 2, "chain_length": 16, "m": 16,
                "n_modes": [2, 4, 8, 16], "weight_bits": [2, 3, 4, 8], "dsp_kind": "DSP48E2",
                "acc_bits": 48, "lanes": 16, "dsps": 32, "param_depth": 128, "requantizers": 2,
                "latency": 25, "per_token": False}  # fmt: skip
TINY_PARAMS = {
    "mv": {**_TINY_COMMON, "kind": "mv", "rows": 1, "dual_int8": False, "dual_field": None,
           "drain_cycles": {"2": 8, "4": 4, "8": 2, "16": 1}, "fifo_depth": 33},
    "mpe": {**_TINY_COMMON, "kind": "mpe", "rows": 2, "dual_int8": True, "dual_field": 19,
            "drain_cycles": {"2": 16, "4": 8, "8": 4, "16": 2}, "fifo_depth": 41},
}  # fmt: skip


@pytest.mark.rtl
def test_manifest_records_params_ports_and_latency(rtl_out: tuple[Path, int, str]) -> None:
    out, _, _ = rtl_out
    man = json.loads((out / "manifest.json").read_text())
    hw = load_hw("tiny")
    assert man["preset"] == "tiny" and man["preset_digest"] == hw.digest
    for kind in ("mv", "mpe"):
        eng = man["engines"][kind]
        p = EngineParams.from_preset(hw, kind)
        assert eng["params"] == TINY_PARAMS[kind]
        assert eng["timing"]["latency"] == 25
        leaves = eng["modules"]["leaves"]
        assert leaves[f"{eng['module']}_slice"] == p.chains  # one module, one per chain
        assert leaves[f"{eng['module']}_rq"] == p.requantizers
        assert leaves[f"{eng['module']}_drain"] == p.requantizers * p.rows
        text = (out / eng["file"]).read_text()
        assert text.count(f"module {eng['module']}_slice(") == 1
        ports = {q["name"]: q for q in eng["ports"]}
        assert ports["i__payload"]["width"] == Shape.cast(p.beat_layout).width
        assert ports["o__payload"]["width"] == Shape.cast(p.result_layout).width
        assert ports["p__ready"]["dir"] == "out" and ports["o__ready"]["dir"] == "in"
        assert eng["payloads"]["i"]["nsel"]["offset"] == p.beat_layout["nsel"].offset


@pytest.mark.rtl
def test_rewrite_only_on_change(rtl_out: tuple[Path, int, str]) -> None:
    out, _, _ = rtl_out
    before = (out / "hwflow_tiny_mv.v").stat().st_mtime_ns
    write_rtl(load_hw("tiny"), out, kinds=("mv",))
    assert (out / "hwflow_tiny_mv.v").stat().st_mtime_ns == before


def test_user_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rtl", "--hw", "no-such-preset"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["synth", "--hw", "vhk158"]) == 2  # DSP58: Yosys has no Versal family
    assert "no synthesis estimate for DSP58" in capsys.readouterr().err
    assert main(["synth", "--hw", "tiny", "--chains", "0"]) == 2


def test_every_preset_engine_fits_amaranth_port_limit() -> None:
    """Shared requantizers keep the result port R words wide: vhk158 generates too."""
    for preset in ("tiny", "u280", "vhk158", "flightllm-u280", "flightllm-vhk158"):
        for kind in ("mv", "mpe"):
            EngineParams.from_preset(load_hw(preset), kind).check_ports()  # type: ignore[arg-type]
    wide = replace(EngineParams.from_preset(load_hw("vhk158"), "mv"), chains=512)
    with pytest.raises(UnsupportedError, match=r"more than the 65535 bits Amaranth 0\.5 emits"):
        wide.check_ports()


_STAT = """
4. Printing statistics.

=== hwflow_tiny_mv_c1 ===

        +----------Local Count, excluding submodules.
        |
    10692 wires
       11 ports
    10232 cells
       27   $scopeinfo
      532   CARRY4
       40   DSP48E1
     2041   FDRE
     1445   LUT2
      932   LUT6
      496   SRL16E

5. Executing Verilog backend.
"""

_NET = """
  DSP48E1 #(.AREG(1)) _1_ (.OPMODE(7'h05), .PCIN(48'h000000000000), .PCOUT(c1));
  DSP48E1 #(.AREG(1)) _2_ (.OPMODE(7'h15), .PCIN({ c1[47:1], c1[0] }), .PCOUT(c2));
  DSP48E1 #(.AREG(1)) _3_ (.OPMODE(7'h55), .PCIN(c2), .PCOUT());
"""


def test_synth_report_parsing() -> None:
    cells = parse_stat(_STAT)
    assert cells["DSP48E1"] == 40 and cells["LUT2"] + cells["LUT6"] == 2377
    assert "wires" not in cells and cells["SRL16E"] == 496
    # only the Z = PCIN (OPMODE[6:4] = 001) link counts as a chain cascade: not the
    # constant PCIN, not the shifted one (Z = PCIN >> 17: a wide multiplier's split)
    assert _cascade_links(_NET) == 1
