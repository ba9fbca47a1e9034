"""``hwflow compile`` / ``disasm`` / ``check``: success paths and every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hwflow.cli import main
from hwflow.config import MAPPINGS
from hwflow.isa import load_program

TINY = ["--model", "tiny-llama", "--hw", "tiny"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwflow.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_compile_writes_program_and_prints_json(tmp_path, capsys):
    out = tmp_path / "prog"
    assert (
        main(
            ["compile", *TINY, "--plan", "flightllm", "--max-len", "256", "-o", str(out), "--json"]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["templates"] == 2 + 16
    assert info["ratio"] > 10 and info["instructions_per_unit"]["MV"] > 0
    assert info["decode_hbm_bytes_per_token"]["weights"] > 0
    assert {r["tensor"] for r in info["quality"]} >= {"prefill.logits", "decode.logits"}
    prog = load_program(out / "program.hwp")
    assert prog.header["plan"] == "flightllm"
    assert json.loads((out / "summary.json").read_text())["ratio"] == info["ratio"]


def test_compile_table_and_disasm(tmp_path, capsys):
    out = tmp_path / "p"
    assert (
        main(
            [
                "compile",
                "--model",
                "tiny-opt",
                "--hw",
                "tiny",
                "--plan",
                "w8a8",
                "--max-len",
                "64",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "storage ratio" in text and "compile time" in text and "SQNR" in text
    assert main(["disasm", str(out / "program.hwp"), "--template", "0"]) == 0
    dis = capsys.readouterr().out
    assert "LOOP" in dis and "ENDLOOP" in dis and "MM" in dis and "w=" in dis
    assert main(["disasm", str(out / "program.hwp"), "--hw", "tiny"]) == 0


def test_check_reports_bit_exact(capsys):
    assert main(["check", *TINY, "--plan", "w4a8", "--max-len", "128", "--decode", "8"]) == 0
    text = capsys.readouterr().out
    assert "bit-exact" in text and "prefill lengths [1, 127, 128]" in text and "SQNR" in text


def test_bad_input_subprocess_one_line_exit_2(tmp_path):
    out = tmp_path / "never"
    r = _run("compile", *TINY, "--plan", "w4a8-2of4", "-o", str(out))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "does not support 2:4 sparsity (allowed: 2:16, 4:16, 8:16, 16:16, or dense)" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "case,message",
    [
        ("malformed_yaml", "malformed YAML"),
        ("unknown_key", "unknown key 'bogus'"),
        ("bad_value", "bits"),
        ("max_len", "max_len = 100000 must lie in 1..512"),
        ("no_fit_hbm", "GiB of HBM"),
        ("no_fit_buffer", "buffers.act_kib holds"),
        ("unsupported", "does not support 2:4 sparsity"),
        ("unknown_model", "model 'nope' not found"),
        ("bad_json", "malformed JSON"),
    ],
)
def test_bad_input(case, message, tmp_path, capsys):
    plan, model, hw, extra = "w4a8", "tiny-llama", "tiny", []
    if case == "malformed_yaml":
        plan = str(tmp_path / "p.yaml")
        (tmp_path / "p.yaml").write_text("name: x\nweights: {bits: 4\n")
    elif case == "unknown_key":
        plan = str(tmp_path / "p.yaml")
        (tmp_path / "p.yaml").write_text("name: x\nbogus: 1\n")
    elif case == "bad_value":
        plan = str(tmp_path / "p.yaml")
        (tmp_path / "p.yaml").write_text("name: x\nweights: {bits: 5}\n")
    elif case == "max_len":
        extra = ["--max-len", "100000"]
    elif case == "no_fit_hbm":
        model = "llama2-7b"
        extra = ["--max-len", "64"]
    elif case == "no_fit_buffer":
        src = (MAPPINGS / "hw" / "tiny.yaml").read_text()
        hw = str(tmp_path / "small.yaml")
        (tmp_path / "small.yaml").write_text(src.replace("act_kib: 128", "act_kib: 1"))
    elif case == "unsupported":
        plan = "w4a8-2of4"
    elif case == "unknown_model":
        model = "nope"
    elif case == "bad_json":
        model = str(tmp_path / "config.json")
        (tmp_path / "config.json").write_text("{ not json")
    out = tmp_path / "out"
    code = main(["compile", "--model", model, "--hw", hw, "--plan", plan, "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hwflow compile: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists()


def test_disasm_refuses_corrupt_and_foreign_programs(tmp_path, capsys):
    out = tmp_path / "p"
    assert (
        main(["compile", *TINY, "--plan", "w4a8", "--max-len", "32", "-o", str(out), "--json"]) == 0
    )
    capsys.readouterr()
    f = out / "program.hwp"
    assert main(["disasm", str(f), "--hw", "u280"]) == 2
    assert "compiled for preset 'tiny'" in capsys.readouterr().err
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF
    bad = tmp_path / "bad.hwp"
    bad.write_bytes(bytes(data))
    assert main(["disasm", str(bad)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
    (tmp_path / "short.hwp").write_bytes(bytes(data[:5]))
    assert main(["disasm", str(tmp_path / "short.hwp")]) == 2
    assert "truncated" in capsys.readouterr().err


def test_check_refuses_large_model(capsys):
    assert main(["check", "--model", "llama2-7b", "--hw", "u280", "--plan", "w4a8"]) == 2
    assert "check runs on models up to" in capsys.readouterr().err


def test_bench_commands_run_on_tiny(capsys):
    assert main(["bench", "funcsim", "--tokens", "20", "--decode", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["hazard_checks"]["instructions"] > 0 and r["no_checks"]["decode_instr_per_s"] > 0
    args = ["bench", "compile", "--model", "tiny-llama", "--hw", "tiny", "--max-len", "256"]
    assert main([*args, "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["templates"] == 18 and r["ratio"] > 10 and r["compile_seconds"] > 0


def test_unwritable_output_is_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["compile", *TINY, "--plan", "w4a8", "--max-len", "32", "-o", str(blocker / "d")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot write" in err
    assert not (blocker.parent / "d").exists()
