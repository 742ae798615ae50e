"""Byte-level BPE tokenizer compatible with OpenAI CLIP's text encoder.

The ids produced here must match the ones CLIP was trained with, otherwise the
pretrained token embeddings (and every learned prompt built on top of them) are
meaningless. The vocabulary is therefore rebuilt from the original merge file
in exactly the order CLIP uses.
"""
from __future__ import annotations

import functools
import gzip
import html
import os
from typing import Optional, Union

import ftfy
import regex
import torch

DEFAULT_BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz")

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"

# CLIP's vocabulary holds 49152 entries before the two special tokens:
# 256 byte symbols, 256 end-of-word byte symbols and the merges.
_NUM_MERGES = 49152 - 256 - 2

_PRETOKENIZE_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character so BPE never sees whitespace or control bytes.

    Printable Latin-1 bytes keep their own character; the rest are shifted to
    code points 256, 257, ... in byte order. Dict insertion order is the order
    in which CLIP lists the base symbols in its vocabulary.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = list(printable)
    code_points = list(printable)
    next_code_point = 256
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(next_code_point)
            next_code_point += 1
    return dict(zip(byte_values, map(chr, code_points)))


def _symbol_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    """Adjacent symbol pairs of a word, the candidates for the next merge."""
    return set(zip(word[:-1], word[1:]))


def _clean_text(text: str) -> str:
    """Normalise text the way CLIP did before training, so equal meanings give equal ids."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r"\s+", " ", text).strip()
    return text.lower()


class SimpleTokenizer:
    """CLIP's byte-level BPE tokenizer: text <-> list of vocabulary ids."""

    def __init__(self, bpe_path: str = DEFAULT_BPE_PATH) -> None:
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}

        with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]

        base = list(self.byte_encoder.values())
        vocab = base + [symbol + END_OF_WORD for symbol in base]
        vocab += ["".join(pair) for pair in merges]
        vocab += [SOT_TEXT, EOT_TEXT]

        self.encoder: dict[str, int] = {token: index for index, token in enumerate(vocab)}
        self.decoder: dict[int, str] = {index: token for token, index in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.cache: dict[str, str] = {SOT_TEXT: SOT_TEXT, EOT_TEXT: EOT_TEXT}
        self.sot_token_id: int = self.encoder[SOT_TEXT]
        self.eot_token_id: int = self.encoder[EOT_TEXT]

    def bpe(self, token: str) -> str:
        """Merge one pre-token's symbols by merge rank; returns the pieces joined by spaces."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + END_OF_WORD,)
        pairs = _symbol_pairs(word)
        while pairs:
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
            if len(word) == 1:
                break
            pairs = _symbol_pairs(word)
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Encode text into CLIP ids, without the start/end-of-text tokens."""
        ids: list[int] = []
        for piece in _PRETOKENIZE_PATTERN.findall(_clean_text(text)):
            symbols = "".join(self.byte_encoder[byte] for byte in piece.encode("utf-8"))
            ids.extend(self.encoder[bpe_token] for bpe_token in self.bpe(symbols).split(" "))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Turn ids back into text; end-of-word markers become spaces."""
        text = "".join(self.decoder[int(index)] for index in ids)
        raw = bytearray(self.byte_decoder[char] for char in text)
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")


_tokenizer: Optional[SimpleTokenizer] = None


def get_tokenizer() -> SimpleTokenizer:
    """Return the shared tokenizer, reading the 49k-entry vocabulary only on first use."""
    global _tokenizer
    if _tokenizer is None:
        _tokenizer = SimpleTokenizer()
    return _tokenizer


def tokenize(texts: Union[str, list[str]], context_length: int = 77, truncate: bool = False) -> torch.LongTensor:
    """Tokenize text(s) into a zero-padded [N, context_length] int64 tensor for CLIP's text encoder.

    Each row is <|startoftext|> + ids + <|endoftext|>. Text that does not fit raises
    RuntimeError unless ``truncate`` is set, in which case the row is cut and still
    ends with <|endoftext|> (CLIP pools the text feature at that position).
    """
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = get_tokenizer()
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [sot] + tokenizer.encode(text) + [eot]
        if len(ids) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text} is too long for context length {context_length}")
            ids = ids[:context_length]
            ids[-1] = eot
        result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result
