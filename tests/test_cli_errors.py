"""Bad input to the mapping flow (issue 2): one line on stderr naming the bad value and what is
allowed, exit code 2, no traceback, and no output left behind by ``compile -o``.

The table runs in-process through :func:`hwflow.cli.main` (an uncaught exception fails the
test as a traceback would); a few cases that used to end in a traceback also run as a real
``python -m hwflow.cli`` process.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from hwflow.cli import main
from hwflow.config import MAPPINGS
from hwflow.isa import ISA_VERSION

TINY_LLAMA = json.loads((MAPPINGS / "models" / "tiny-llama.json").read_text())


def _preset(tmp: Path, key: str, value: object) -> str:
    """The tiny preset with ``key`` (dotted) set to ``value``, written as YAML."""
    data = yaml.safe_load((MAPPINGS / "hw" / "tiny.yaml").read_text())
    *head, last = key.split(".")
    node = data
    for k in head:
        node = node[k]
    node[last] = value
    path = tmp / "preset.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _file(tmp: Path, name: str, data: object) -> str:
    path = tmp / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data)
    else:
        path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return str(path)


def _one_line_error(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hwflow {argv[0]}") and ": error: " in err, err
    for n in needles:
        assert n in err, err
    return err


# (what is bad, how: (kind, ...), the message's key parts). kind: hw = a preset edit (key,
# value); plan / model = a file's content; arg = extra compile arguments; file = a raw file
# given as --hw, --plan or --model.
COMPILE_CASES = {
    # preset: types and values
    "chains negative": (
        "hw",
        "mv.chains",
        -3,
        "mv.chains: Input should be greater than 0 (got -3)",
    ),
    "chains string": (
        "hw",
        "mv.chains",
        "four",
        "mv.chains: Input should be a valid integer (got 'four')",
    ),
    "chains bool": (
        "hw",
        "mv.chains",
        True,
        "mv.chains: Input should be a valid integer (got True)",
    ),
    "clock zero": ("hw", "clock_mhz", 0, "clock_mhz: Input should be greater than 0 (got 0)"),
    "clock infinite": (
        "hw",
        "clock_mhz",
        math.inf,
        "clock_mhz: Input should be a finite number (got inf)",
    ),
    "capacity infinite": (
        "hw",
        "hbm.capacity_gib",
        math.inf,
        "hbm.capacity_gib: Input should be a finite number",
    ),
    "list for a mapping": ("hw", "mv", [1, 2], "mv: Input should be a valid dictionary"),
    "unknown preset key": ("hw", "mv.lanes", 4, "unknown key 'mv.lanes'"),
    "m not a power of two": ("hw", "sparsity.m", 12, "sparsity.m = 12 must be a power of two"),
    "n above m": (
        "hw",
        "sparsity.n_allowed",
        [2, 32],
        "sparsity.n_allowed [32] must lie in 1..m=16",
    ),
    "no weight bits": (
        "hw",
        "weight_bits",
        [],
        "weight_bits [] not supported (allowed: a non-empty subset of [2, 3, 4, 8])",
    ),
    "number without source": ("hw", "sfu.sources", {}, "sfu.lanes = 4 has no source"),
    # preset: the model does not fit (late failures: -o must still leave nothing)
    "activations do not fit": (
        "hw",
        "buffers.act_kib",
        1,
        "tiny-llama / w4a8 on preset tiny at max_len 16: activations of a 1-token chunk need",
        "buffers.act_kib holds 1024 bytes",
    ),
    "parameters do not fit": ("hw", "buffers.param_kib", 1, "buffers.param_kib holds 1024 bytes"),
    "instructions do not fit": (
        "hw",
        "buffers.instr_kib",
        1,
        "needs",
        "bytes of instructions but buffers.instr_kib holds 1,024",
    ),
    "HBM too small": (
        "hw",
        "hbm.capacity_gib",
        0.00005,
        "the model needs",
        "KiB of HBM",
        "but preset tiny has 52.43 KiB (hbm.capacity_gib)",
    ),
    # plans
    "bits four": (
        "plan",
        {"name": "p", "weights": {"bits": "four"}},
        "weights.bits: Input should be 2, 3, 4 or 8 (got 'four')",
    ),
    "sparsity syntax": (
        "plan",
        {"name": "p", "weights": {"sparsity": "2/4"}},
        "weights.sparsity: sparsity '2/4' is not 'N:M' (e.g. '4:16') or 'dense'",
    ),
    "N above M": (
        "plan",
        {"name": "p", "weights": {"sparsity": "8:4"}},
        "weights.sparsity: N:M sparsity needs 1 <= N <= M, got 8:4",
    ),
    "M not a power of two": (
        "plan",
        {"name": "p", "weights": {"sparsity": "2:12"}},
        "M a power of two, got 2:12",
    ),
    "layer out of range": (
        "plan",
        {"name": "p", "rules": [{"layers": [5], "bits": 4}]},
        "plan p, rules[0]: layers [5] name layers [5] outside 0..1 (tiny-llama has 2 layers)",
    ),
    "layer range out of range": (
        "plan",
        {"name": "p", "rules": [{"layers": "0-9", "bits": 4}]},
        "rules[0]: layers '0-9' name layers [2, 3, 4, 5, 6, 7, 8, 9] outside 0..1",
    ),
    "empty layer range": (
        "plan",
        {"name": "p", "rules": [{"layers": "1-0", "bits": 4}]},
        "rules.0.layers: layers '1-0': range 1-0 is empty (write 0-1)",
    ),
    "bool layer": (
        "plan",
        {"name": "p", "rules": [{"layers": [True], "bits": 4}]},
        "layers [True]: expected 'a-b,c', a layer number or a list of layer numbers",
    ),
    "unknown op": (
        "plan",
        {"name": "p", "rules": [{"ops": ["qq"], "bits": 4}]},
        "rule ops ['qq'] unknown (allowed: ['q', 'k', 'v', 'o', 'gate', 'up', 'down'])",
    ),
    "rules as a mapping": (
        "plan",
        {"name": "p", "rules": {"layers": [0]}},
        "rules: Input should be a valid list",
    ),
    "unknown rule key": (
        "plan",
        {"name": "p", "rules": [{"layer": [0], "bits": 4}]},
        "unknown key 'rules.0.layer'",
    ),
    "attention block too wide": (
        "plan",
        {"name": "p", "attention": {"pattern": "block", "block": 100000}},
        "attention.block = 100000 does not fit the 12-bit SFU.blk instruction field (allowed: 0..4095)",
    ),
    "plan unsupported by preset": (
        "arg",
        ["--plan", "w4a8-2of4"],
        "plan w4a8-2of4, L0.q: preset tiny does not support 2:4 sparsity (allowed: 2:16, 4:16, 8:16, 16:16, or dense)",
    ),
    # models
    "gpt2": (
        "model",
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
        "unsupported architecture: GPT2LMHeadModel (supported: LlamaForCausalLM, MistralForCausalLM, OPTForCausalLM)",
    ),
    "rope scaling": (
        "model",
        {**TINY_LLAMA, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
        "rope_scaling {'type': 'dynamic', 'factor': 2.0} unsupported",
    ),
    "missing key": (
        "model",
        {k: v for k, v in TINY_LLAMA.items() if k != "vocab_size"},
        "lacks 'vocab_size'",
    ),
    "heads as string": (
        "model",
        {**TINY_LLAMA, "num_attention_heads": "4"},
        "num_attention_heads = '4' must be a positive integer",
    ),
    "reduction not a block multiple": (
        "model",
        {**TINY_LLAMA, "intermediate_size": 120},
        "L0.down: reduction length 120 is not a multiple of the 16-wide activation block of preset tiny",
    ),
    # lengths
    "max-len 0": (
        "arg",
        ["--max-len", "0"],
        "max_len = 0 must lie in 1..512 (tiny-llama's max_position_embeddings)",
    ),
    "max-len above the model": ("arg", ["--max-len", "513"], "max_len = 513 must lie in 1..512"),
    # files that are not what they should be
    "malformed YAML preset": (
        "file",
        "--hw",
        "x.yaml",
        "name: x\n  bad: [\n",
        "malformed YAML at line 2 column",
    ),
    "malformed YAML plan": (
        "file",
        "--plan",
        "x.yaml",
        "name: x\nweights: {bits: 4\n",
        "malformed YAML at line",
    ),
    "malformed JSON model": (
        "file",
        "--model",
        "config.json",
        '{"a": 1,',
        "malformed JSON at line 1 column 9",
    ),
    "duplicate YAML key": (
        "file",
        "--plan",
        "x.yaml",
        "name: x\nweights: {bits: 4}\nweights: {bits: 8}\n",
        "malformed YAML at line 3 column 1: duplicate key 'weights'",
    ),
    "duplicate JSON key": (
        "file",
        "--model",
        "config.json",
        json.dumps(TINY_LLAMA)[:-1] + ', "hidden_size": 128}',
        "malformed JSON: duplicate key 'hidden_size' in a JSON object",
    ),
    "empty preset": (
        "file",
        "--hw",
        "x.yaml",
        "",
        "the file is empty (expected a YAML or JSON mapping)",
    ),
    "empty model": ("file", "--model", "config.json", "\n", "the file is empty"),
    "binary plan": (
        "file",
        "--plan",
        "x.yaml",
        bytes(range(128, 256)),
        "not a text file (byte 0 is not UTF-8",
    ),
    "NUL bytes preset": (
        "file",
        "--hw",
        "x.yaml",
        b"name: x\x00\x00",
        "not a text file (it holds NUL bytes",
    ),
    "list preset": (
        "file",
        "--hw",
        "x.yaml",
        "- 1\n- 2\n",
        "expected a mapping at the top level, got list",
    ),
    "list model": (
        "file",
        "--model",
        "config.json",
        "[1, 2]",
        "config.json: a config.json must hold a JSON object, got list",
    ),
    "directory preset": ("file", "--hw", "adir/", None, "is a directory (expected a YAML file)"),
    "directory model": (
        "file",
        "--model",
        "adir/",
        None,
        "is a directory (expected a config.json or a folder holding one)",
    ),
    "unknown preset name": (
        "arg",
        ["--hw", "u999"],
        "hardware preset 'u999' not found (shipped: flightllm-u280,",
    ),
}


@pytest.mark.parametrize("case", COMPILE_CASES)
def test_compile_bad_input(case, tmp_path, capsys):
    kind, *rest = COMPILE_CASES[case]
    args = {"--model": "tiny-llama", "--hw": "tiny", "--plan": "w4a8", "--max-len": "16"}
    if kind == "hw":
        key, value, *needles = rest
        args["--hw"] = _preset(tmp_path, key, value)
    elif kind == "plan":
        data, *needles = rest
        args["--plan"] = _file(tmp_path, "plan.yaml", data)
    elif kind == "model":
        data, *needles = rest
        args["--model"] = _file(tmp_path, "config.json", data)
    elif kind == "arg":
        extra, *needles = rest
        args.update(zip(extra[::2], extra[1::2], strict=True))
    else:
        option, name, data, *needles = rest
        if data is None:
            (tmp_path / name).mkdir()
            args[option] = str(tmp_path / name)
        else:
            args[option] = _file(tmp_path, name, data)
    out = tmp_path / "out" / "nested"
    argv = ["compile", *(x for kv in args.items() for x in kv), "-o", str(out)]
    _one_line_error(capsys, argv, *needles)
    assert not (tmp_path / "out").exists()  # nothing written, not even the parent


def test_model_folder_is_read_as_hf(tmp_path, capsys):
    (tmp_path / "TinyLlama").mkdir()
    (tmp_path / "TinyLlama" / "config.json").write_text(json.dumps(TINY_LLAMA))
    argv = ["compile", "--model", str(tmp_path / "TinyLlama"), "--hw", "tiny", "--plan", "w8a8"]
    assert main([*argv, "--max-len", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "TinyLlama"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("prog")
    assert main(["compile", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8",
                 "--max-len", "16", "-o", str(out)]) == 0  # fmt: skip
    return (out / "program.hwp").read_bytes()


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _with_header(data: bytes, header: bytes) -> bytes:
    (hlen,) = struct.unpack_from("<I", data, 10)
    head = struct.pack("<HI", ISA_VERSION, len(header))
    return _with_crc(data[:8] + head + header + data[14 + hlen : -4])


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x10
    return bytes(b)


DISASM_CASES = {
    "empty": (lambda d: b"", [], "truncated (0 bytes), not an hwflow program"),
    "truncated": (lambda d: d[: len(d) // 2], [], "checksum mismatch (corrupt or truncated file)"),
    "bit flip": (lambda d: _flip(d, 300), [], "checksum mismatch"),
    "foreign": (lambda d: b"\x7fELF" + bytes(60), [], "bad magic b'\\x7fELF"),
    "other ISA": (
        lambda d: _with_crc(d[:8] + b"\x09\x00" + d[10:-4]),
        [],
        f"ISA version 9, this hwflow reads version {ISA_VERSION}",
    ),
    "header lacks keys": (
        lambda d: _with_header(d, b'{"preset": "tiny"}'),
        [],
        "malformed program (header lacks ['isa_version', 'max_len', 'model', 'plan', 'preset_digest'])",
    ),
    "header not an object": (
        lambda d: _with_header(d, b"[1, 2]"),
        [],
        "malformed program (header lacks",
    ),
    "header of the wrong types": (
        lambda d: _with_header(
            d,
            b'{"isa_version": 1, "preset": "tiny", "preset_digest": 7, "model": "m", "plan": "p",'
            b' "max_len": 16}',
        ),
        [],
        "malformed program (header preset_digest = 7 is not str)",
    ),
    "stray bytes": (
        lambda d: _with_crc(d[:-4] + b"junk"),
        [],
        "malformed program (4 stray bytes after the last section)",
    ),
    "unknown opcode": (lambda d: _with_crc(d[:-8] + b"\x3f\x00\x00\x00"), [], "unknown opcode 63"),
    "other preset": (
        lambda d: d,
        ["--hw", "u280"],
        "program.hwp: program was compiled for preset 'tiny'",
        "not for u280",
    ),
    "template out of range": (lambda d: d, ["--template", "9"], "--template 9 out of range (0..1)"),
}


@pytest.mark.parametrize("case", DISASM_CASES)
def test_disasm_refuses(case, program, tmp_path, capsys):
    make, extra, *needles = DISASM_CASES[case]
    f = tmp_path / "program.hwp"
    f.write_bytes(make(program))
    err = _one_line_error(capsys, ["disasm", str(f), *extra], *needles)
    assert str(f) in err or case == "template out of range"


def test_disasm_of_a_directory_or_missing_file(tmp_path, capsys):
    _one_line_error(capsys, ["disasm", str(tmp_path)], "cannot read (Is a directory)")
    _one_line_error(capsys, ["disasm", str(tmp_path / "no.hwp")], "cannot read (No such file")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["compile", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8", "--max-len", "x"],
         "argument --max-len: invalid int value: 'x' (see hwflow compile --help)"),
        (["compile", "--hw", "tiny"], "the following arguments are required: --model, --plan"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        (["disasm"], "the following arguments are required: file"),
        (["quality", "--decode", "-1"], "--decode -1 must lie in 0..511 for tiny-llama"),
        (["quality", "--tokens", "0"], "--tokens 0 must lie in 1..508 for tiny-llama"),
        (["quality", "--seed", "-1"], "argument --seed: invalid seed '-1' (allowed: a whole number >= 0)"),
        (["check", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8", "--max-len", "0"],
         "max_len = 0 must lie in 1..512"),
        (["check", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8", "--max-len", "16",
          "--decode", "0"], "--decode 0 must lie in 1..15 (max_len 16)"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line(argv, needle, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_tiny_max_positions_compile_and_check(tmp_path, capsys):
    """A model with 2 positions: the quality sample shrinks to fit instead of crashing."""
    model = _file(tmp_path, "config.json", {**TINY_LLAMA, "max_position_embeddings": 2})
    assert main(["compile", "--model", model, "--hw", "tiny", "--plan", "w8a8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_len"] == 2
    args = ["--hw", "tiny", "--plan", "w8a8", "--max-len", "2", "--decode", "1"]
    assert main(["check", "--model", model, *args]) == 0


def test_former_tracebacks_in_a_real_process(tmp_path, program):
    """Cases that used to end in a Python traceback, run as the user runs them."""
    plan = _file(tmp_path, "plan.yaml", {"name": "p", "weights": {"sparsity": "2/4"}})
    hw = _preset(tmp_path, "hbm.capacity_gib", math.inf)
    model = _file(tmp_path, "config.json", {**TINY_LLAMA, "num_attention_heads": "4"})
    prog = tmp_path / "p.hwp"
    prog.write_bytes(_with_header(program, b"[1]"))
    base = ["compile", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8"]
    for argv in (
        ["compile", "--model", "tiny-llama", "--hw", "tiny", "--plan", plan],
        ["compile", "--model", "tiny-llama", "--hw", hw, "--plan", "w8a8"],
        ["compile", "--model", model, "--hw", "tiny", "--plan", "w8a8"],
        ["disasm", str(prog)],
        ["quality", "--decode", "-1"],
        [*base, "--max-len", "abc"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "hwflow.cli", *argv], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and r.stdout == "", r.stderr


def test_names_resolve_before_folders_of_the_same_name(tmp_path, monkeypatch, capsys):
    """``--hw tiny`` is the shipped preset even with a folder ``tiny/`` in the working
    directory; a shipped name may carry its suffix."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    argv = ["compile", "--model", "tiny-llama.json", "--hw", "tiny", "--plan", "w8a8.yaml"]
    assert main([*argv, "--max-len", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "tiny"


def test_closed_stdout_is_not_a_traceback(tmp_path):
    """``hwflow disasm ... | head``: the disassembly (~400 kB, more than a pipe holds) stops
    quietly when the reader goes away."""
    out = tmp_path / "big"
    argv = ["compile", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8", "-o", str(out)]
    assert main([*argv, "--json"]) == 0
    f = out / "program.hwp"
    r = subprocess.run(
        f"'{sys.executable}' -m hwflow.cli disasm '{f}' | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.stdout.startswith("; hwflow program") and r.stderr == "", r.stderr


def test_plan_that_does_not_tile_the_model_is_refused_by_quality(tmp_path, capsys):
    """The numeric reference (no preset involved) used to fail with a traceback deep in the
    pruning when a layer's reduction length is not a multiple of the plan's M."""
    model = _file(tmp_path, "config.json", {**TINY_LLAMA, "intermediate_size": 120})
    _one_line_error(
        capsys,
        ["quality", "--model", model, "--plan", "flightllm"],
        "plan flightllm, L0.down: 8:16 sparsity prunes groups of 16 along a reduction of 120, "
        "not a multiple of 16",
    )


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_leaves_no_folders(error, tmp_path, monkeypatch, capsys):
    """summary.json fails after program.hwp was written: neither file stays, nor the folders
    ``-o`` made for them (an interrupt too)."""
    import hwflow.commands.compile as cc

    real = cc.atomic_write

    def failing(path, data):
        if path.name == "summary.json":
            raise error
        real(path, data)

    monkeypatch.setattr(cc, "atomic_write", failing)
    out = tmp_path / "a" / "b" / "c"
    argv = ["compile", "--model", "tiny-llama", "--hw", "tiny", "--plan", "w8a8", "--max-len", "8"]
    if isinstance(error, OSError):
        _one_line_error(capsys, [*argv, "-o", str(out)], "cannot write (No space left on device)")
    else:
        assert main([*argv, "-o", str(out)]) == 130
    assert list(tmp_path.iterdir()) == []
