"""Tests for clip.tokenizer: ids must match the ones OpenAI CLIP was trained with."""
import gzip
import re

import pytest
import torch

from clip.tokenizer import DEFAULT_BPE_PATH, SimpleTokenizer, bytes_to_unicode, get_tokenizer, tokenize

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tok() -> SimpleTokenizer:
    return get_tokenizer()


def ids_of(tok: SimpleTokenizer, *token_strings: str) -> list:
    """Look up hand-written vocabulary strings; a KeyError means the expectation itself is wrong."""
    return [tok.encoder[s] for s in token_strings]


# --- byte alphabet and vocabulary layout ------------------------------------------------------

def test_bytes_to_unicode_table():
    table = bytes_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("a")] == "a" and table[ord("!")] == "!" and table[ord("~")] == "~"
    assert table[0xE9] == "\u00e9"  # printable Latin-1 keeps its own character
    # Non-printable bytes are shifted to 256, 257, ... in byte order:
    # 0..32 -> 256..288, 127..160 -> 289..322, 173 -> 323.
    assert table[0] == chr(256)
    assert table[32] == chr(288)  # space -> 'Ġ'
    assert table[127] == chr(289)
    assert table[0x8C] == chr(256 + 33 + (0x8C - 127))
    assert table[173] == chr(323)
    # Insertion order is the vocabulary order: printable ranges first.
    assert list(table)[:3] == [ord("!"), ord('"'), ord("#")]
    assert list(table)[188] == 0  # byte 0 is the first non-printable one


def test_vocabulary_layout(tok):
    assert len(tok.encoder) == 49408
    assert tok.sot_token_id == SOT and tok.eot_token_id == EOT
    assert tok.encoder["<|startoftext|>"] == SOT and tok.encoder["<|endoftext|>"] == EOT
    assert tok.encoder["!"] == 0 and tok.encoder["!</w>"] == 256
    assert tok.encoder[chr(256)] == 188  # first non-printable byte follows the 188 printable ones
    with gzip.open(DEFAULT_BPE_PATH, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    first, last = lines[1].split(), lines[48894].split()
    assert tok.encoder["".join(first)] == 512
    assert tok.encoder["".join(last)] == 49405
    assert all(tok.decoder[i] == s for s, i in tok.encoder.items())


# --- encode: verified examples -------------------------------------------------------------------

def test_verified_examples(tok):
    assert tok.encode("X X X X dog.") == [343, 343, 343, 343, 1929, 269]
    assert tok.encode("a photo of a") == [320, 1125, 539, 320]
    assert tok.encode("707-320") == ids_of(tok, "7</w>", "0</w>", "7</w>", "-</w>", "3</w>", "2</w>", "0</w>")


# --- encode: tricky strings, expected ids built by hand from vocabulary strings -------------------
# Byte symbols: 'é' = C3 A9 -> 'Ã©'; '猫' = E7 8C AB -> 'ç', chr(302), '«';
# '🐶' = F0 9F 90 B6 -> 'ð', chr(321), chr(306), '¶'.
TRICKY = [
    ("café", ["caf\u00c3\u00a9</w>"]),
    ("&amp;", ["&</w>"]),
    ("&amp;amp;", ["&</w>"]),
    # ftfy leaves entities alone once the text contains '<', so only the double
    # html.unescape turns "&amp;amp;" into "&" here.
    ("x < y &amp;amp; z", ["x</w>", "<</w>", "y</w>", "&</w>", "z</w>"]),
    ("fish &amp; chips", ["fish</w>", "&</w>", "chips</w>"]),
    ("it's", ["it</w>", "'s</w>"]),
    ("they'll", ["they</w>", "'ll</w>"]),
    ("2024", ["2</w>", "0</w>", "2</w>", "4</w>"]),
    ("\U0001f436", ["\u00f0" + chr(321) + chr(306) + "\u00b6</w>"]),
    ("\u732b", ["\u00e7", chr(302), "\u00ab</w>"]),
    ("  a\n\tphoto ", ["a</w>", "photo</w>"]),
    ("A PHOTO", ["a</w>", "photo</w>"]),
    ("dog!!", ["dog</w>", "!!</w>"]),
    ("<|startoftext|>", ["<|startoftext|>"]),
    ("", []),
]


@pytest.mark.parametrize("text,expected_tokens", TRICKY, ids=[repr(t) for t, _ in TRICKY])
def test_tricky_strings(tok, text, expected_tokens):
    assert tok.encode(text) == ids_of(tok, *expected_tokens)


def test_multi_piece_word_uses_only_vocabulary_pieces(tok):
    ids = tok.encode("tokenization")
    assert len(ids) > 1  # not a single vocabulary entry, so BPE must split it
    pieces = [tok.decoder[i] for i in ids]
    assert "".join(pieces) == "tokenization</w>"
    assert pieces[-1].endswith("</w>") and not any(p.endswith("</w>") for p in pieces[:-1])


def test_upper_case_and_whitespace_fold(tok):
    assert tok.encode("A Photo OF a DOG") == tok.encode("a photo of a dog")
    assert torch.equal(tokenize("  a\n\tphoto "), tokenize("a photo"))


# --- decode -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["a photo of a dog", "tokenization of unusual words", "caf\u00e9 \u732b"])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)).strip() == text


def test_decode_turns_end_of_word_into_space(tok):
    assert tok.decode([320, 1125]) == "a photo "


# --- tokenize ---------------------------------------------------------------------------------------

def test_tokenize_shape_dtype_and_padding():
    out = tokenize(["a photo of a", "", "dog"])
    assert out.dtype == torch.long and out.shape == (3, 77)
    assert out[0, :6].tolist() == [SOT, 320, 1125, 539, 320, EOT]
    assert out[1, :2].tolist() == [SOT, EOT]
    assert not out[0, 6:].any() and not out[1, 2:].any()
    assert out[2, :3].tolist() == [SOT, 1929, EOT]


def test_tokenize_str_equals_single_item_list():
    assert torch.equal(tokenize("a photo of a dog"), tokenize(["a photo of a dog"]))


def test_context_length_argument():
    fits = "a " * 8  # SOT + 8 + EOT = 10 ids
    out = tokenize(fits, context_length=10)
    assert out.shape == (1, 10) and out[0].tolist() == [SOT] + [320] * 8 + [EOT]
    with pytest.raises(RuntimeError):
        tokenize(fits + "a", context_length=10)


def test_too_long_raises_with_message():
    text = "a " * 100
    with pytest.raises(RuntimeError, match=re.escape(f"Input {text} is too long for context length 77")):
        tokenize(text)


def test_truncate_keeps_context_length_and_ends_with_eot():
    out = tokenize(["a " * 100], truncate=True)
    assert out.shape == (1, 77)
    assert out[0, 0] == SOT and out[0, -1] == EOT
    assert out[0, 1:76].tolist() == [320] * 75
