"""``hwflow quality`` and the CLI's error discipline (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

from hwflow.cli import main


def test_quality_json(capsys):
    assert (
        main(
            [
                "quality",
                "--model",
                "tiny-opt",
                "--plan",
                "w8a8",
                "--plan",
                "flightllm",
                "--json",
                "--decode",
                "2",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out["plans"]) == {"w8a8", "flightllm"}
    w8 = {r["tensor"]: r["sqnr_db"] for r in out["plans"]["w8a8"]}
    fl = {r["tensor"]: r["sqnr_db"] for r in out["plans"]["flightllm"]}
    assert w8["prefill.logits"] > fl["prefill.logits"] > 5


def test_quality_table(capsys):
    assert main(["quality", "--plan", "w4a8", "--tokens", "8", "--decode", "1"]) == 0
    assert "prefill.x1" in capsys.readouterr().out


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwflow.cli", *args], capture_output=True, text=True, check=False
    )


def test_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    for args, needle in [
        (("quality", "--model", "llama2-7b"), "quality runs on models up to"),
        (("quality", "--plan", str(bad)), "malformed YAML at line"),
        (("quality", "--model", "nope"), "model 'nope' not found (shipped:"),
    ]:
        r = _run(*args)
        assert r.returncode == 2, r
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def _checkpoint(tmp_path, tokenizer: bool = True):
    """tiny-llama with seeded weights saved as a Hugging Face folder with a byte tokenizer."""
    from ckpt_files import hf_llama, shipped_config, write_hf

    from hwflow.compress import random_weights
    from hwflow.config import load_model

    w = random_weights(load_model("tiny-llama"), 3)
    folder = write_hf(
        tmp_path / "ck", shipped_config("tiny-llama"), hf_llama(w, 2), tokenizer=tokenizer
    )
    return folder, w


def test_quality_checkpoint_json(tmp_path, capsys):
    """Perplexity of the checkpoint's own weights on the given text's tokens."""
    import numpy as np
    from ckpt_files import byte_tokenizer

    from hwflow.config import load_model, load_plan
    from hwflow.perplexity import float_perplexity

    folder, w = _checkpoint(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 3)
    args = ["quality", "--model", str(folder), "--plan", "w8a8", "--plan", "w4a8"]
    assert main([*args, "--text", str(text), "--tokens", "40", "--decode", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 40 and set(out["ppl"]) == {"w8a8", "w4a8"}
    ids = np.array(byte_tokenizer().encode(text.read_text()).ids[:40])
    w32 = {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}
    want = float_perplexity(load_model("tiny-llama"), load_plan("w8a8"), w32, ids).ppl
    assert out["float_ppl"] == want
    assert all(1 < p < 1e6 for p in out["ppl"].values())
    assert set(out["kl"]) == {"w8a8", "w4a8"} and all(k > 0 for k in out["kl"].values())
    assert {r["tensor"] for r in out["plans"]["w8a8"]} >= {"prefill.x2", "prefill.logits"}


def test_quality_checkpoint_table_default_text(tmp_path, capsys):
    folder, _ = _checkpoint(tmp_path)
    assert main(["quality", "--model", str(folder), "--plan", "w8a8", "--tokens", "24"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps the title
    assert "perplexity on 24 tokens of gpl-3.txt" in out and "prefill.logits" in out


def test_quality_checkpoint_errors(tmp_path):
    folder, _ = _checkpoint(tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    bare, _ = _checkpoint(tmp_path / "bare", tokenizer=False)
    torch_only = tmp_path / "torch"
    torch_only.mkdir()
    (torch_only / "config.json").write_text((folder / "config.json").read_text())
    (torch_only / "pytorch_model.bin").write_bytes(b"not read")
    for args, needle in [
        (("--model", str(folder), "--text", str(short), "--tokens", "9"), "has 4 tokens, fewer"),
        (("--model", str(folder), "--tokens", "1"), "--tokens 1 must lie in 2..508"),
        (("--model", "tiny-llama", "--text", str(short)), "--text needs a checkpoint"),
        (("--model", str(bare)), "no tokenizer.json"),
        (("--model", str(torch_only)), "PyTorch *.bin weights unsupported"),
    ]:
        r = _run("quality", "--plan", "w8a8", *args)
        assert r.returncode == 2, r
        assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_check_runs_a_checkpoint_bit_exact(tmp_path, capsys):
    """``check`` on trained weights (here: seeded weights saved as a checkpoint) runs the
    funcsim against the integer reference of *those* weights, on the default text's tokens."""
    folder, _ = _checkpoint(tmp_path)
    args = ["check", "--hw", "tiny", "--plan", "w8a8", "--max-len", "24", "--decode", "2"]
    assert main([*args, "--model", str(folder), "--json"]) == 0
    real = json.loads(capsys.readouterr().out)
    assert real["bit_exact"] and len(real["steps"]) >= 3
    assert main([*args, "--model", "tiny-llama", "--json"]) == 0  # seed-0 random weights
    seeded = json.loads(capsys.readouterr().out)
    assert real["quality"] != seeded["quality"]
