"""Tokenizers of checkpoints, with the ``tokenizers`` library: a Hugging Face folder's
tokenizer.json, or one built from a GGUF file's vocabulary: byte-level BPE with its merges
(llama.cpp's ``gpt2`` model, with the pre-tokenizer its ``tokenizer.ggml.pre`` names) or
SentencePiece BPE from its scores (llama.cpp's ``llama`` model, LLaMA-1/2 and Mistral).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from hwflow.errors import ConfigError, UnsupportedError

__all__ = ["PRE_TOKENIZERS", "gguf_tokenizer", "hf_tokenizer", "spm_merges"]

#: GPT-2's word-splitting regex (also llama.cpp's default for the ``gpt2`` model).
_GPT2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
#: LLaMA-3's regex (llama.cpp ``LLAMA_VOCAB_PRE_TYPE_LLAMA3``).
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    """StarCoder-style (SmolLM): every digit alone, then GPT-2's regex."""
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _GPT2])


def _llama3() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA3), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


#: ``tokenizer.ggml.pre`` -> its pre-tokenizer (the regexes of llama.cpp's ``llama-vocab.cpp``).
PRE_TOKENIZERS = {
    "default": lambda: _GPT2,
    "gpt-2": lambda: _GPT2,
    "gpt2": lambda: _GPT2,
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
    "refact": _digits_then_gpt2,
    "llama-bpe": _llama3,
    "llama3": _llama3,
}

_UNKNOWN, _CONTROL = 2, 3  #: llama.cpp's token types of the unknown and special tokens


def hf_tokenizer(folder: Path) -> Tokenizer:
    """``folder/tokenizer.json``; ConfigError when it is missing or unreadable."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(
            f"{folder}: no tokenizer.json (hwflow reads Hugging Face fast tokenizers; a real-text "
            "measurement needs the checkpoint's tokenizer)"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust library raises plain Exception on a malformed file
        raise ConfigError(f"{path}: not a readable tokenizer.json ({e})") from None


def gguf_tokenizer(path: Path, meta: dict[str, Any]) -> Tokenizer:
    """The tokenizer described by a GGUF's ``tokenizer.ggml.*`` metadata (``meta`` maps each
    key to its value)."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        raise ConfigError(f"{path}: the GGUF file holds no tokenizer (tokenizer.ggml.* metadata)")
    if kind == "llama":
        tok = _sentencepiece_bpe(tokens, meta)
    elif kind == "gpt2":
        tok = _byte_level_bpe(path, tokens, meta)
    else:
        raise UnsupportedError(
            f"{path}: GGUF tokenizer model {kind!r} unsupported (supported: gpt2 byte-level BPE, "
            "llama SentencePiece BPE)"
        )
    types = meta.get("tokenizer.ggml.token_type") or []
    special = [t for t, ty in zip(tokens, types, strict=False) if ty in (_UNKNOWN, _CONTROL)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", kind == "llama") and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", special_tokens=[(tokens[bos], bos)]
        )
    return tok


def _byte_level_bpe(path: Path, tokens: list[str], meta: dict[str, Any]) -> Tokenizer:
    """llama.cpp's ``gpt2`` model: byte-level BPE with the file's merges."""
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise UnsupportedError(
            f"{path}: GGUF pre-tokenizer {pre!r} unsupported (supported: {', '.join(PRE_TOKENIZERS)})"
        )
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    return tok


def spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges of a SentencePiece vocabulary (which stores scores, not merges): every split
    of a token into two tokens, the merge of the higher-scored token first. This is how
    transformers converts SentencePiece and GGUF llama vocabularies to a fast tokenizer."""
    score = dict(zip(tokens, scores, strict=True))
    merges: list[tuple[str, str, float]] = []
    for tok, s in score.items():
        local = [
            (tok[:i], tok[i:], s)
            for i in range(1, len(tok))
            if tok[:i] in score and tok[i:] in score
        ]
        local.sort(key=lambda m: (score[m[0]], score[m[1]]), reverse=True)
        merges.extend(local)
    merges.sort(key=lambda m: m[2], reverse=True)  # stable: ties keep the order above
    return [(a, b) for a, b, _ in merges]


def _sentencepiece_bpe(tokens: list[str], meta: dict[str, Any]) -> Tokenizer:
    """llama.cpp's ``llama`` model: SentencePiece BPE (``▁`` for spaces, a space prepended,
    unknown bytes as ``<0xNN>`` tokens)."""
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    vocab = {t: i for i, t in enumerate(tokens)}
    model = models.BPE(
        vocab,
        spm_merges(tokens, [float(x) for x in scores]),
        unk_token=tokens[unk] if unk is not None else None,
        fuse_unk=True,
        byte_fallback=True,
    )
    tok = Tokenizer(model)
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    steps = [normalizers.Prepend("▁")] if prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    strip = [decoders.Strip(" ", 1, 0)] if prefix else []
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    return tok
