"""The o200k_harmony tokenizer.json we build encodes exactly like openai-harmony and bpe-openai."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import openai_harmony as oh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptoss_mlx.errors import BadCheckpointError
from gptoss_mlx.harmony.tokenizer import (
    HARMONY_SPECIAL_TOKENS,
    O200K_PATTERN,
    Tokenizer,
    build_tokenizer_json,
    find_o200k_base,
    harmony_encodings_dir,
    tiktoken_base_bytes,
    write_tiktoken_base,
)

CORPUS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock; we'll see, they've gone, I'd say.",
    "DON'T SHOUT'S I'M HE'LL WE'VE THEY'RE",
    "def f(x):\n    return x ** 2  # square\n\n\tif x >= 10_000:\n\t\tprint(f'{x!r}')\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] << 3; } // C++ /* comment */",
    '{"key": [1, 2.5e-3, null, true], "url": "https://example.com/a/b?c=d&e=f#g"}',
    "3.14159265358979 1234567890 0x1F -42 1e10 ١٢٣٤٥ ๑๒๓ 12,345,678.90",
    "日本語のテキストです。中文文本，还有標點符號！한국어 텍스트입니다.",
    "Emoji: 🤗🚀👩‍👩‍👧‍👦🏳️‍🌈 ✨ 👍🏽 🇫🇷",
    "العربية: مرحبا بالعالم. עברית: שלום עולם. فارسی",
    "Combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937 Z\u0351\u0362a\u0352l\u0308go",
    "Whitespace    runs\t\t\tand   \n\n\n   newlines \u00a0\u2003\u3000 end   ",
    "CRLF line\r\nanother\r\n\r\n  \r\n\rlone CR\rend\n",
    "Ελληνικά κείμενο. Русский текст. Ünïcödé ßtraße ÆØÅ",
    "<|start|>user<|message|>hi<|end|> <|endoftext|> <|reserved_200100|>",
    "   leading spaces and trailing   ",
    "x" * 300 + " " + "🙂" * 50 + "\n" * 20,
]
FRAGMENTS = [
    "'s", "'T", "'ll", "'VE", "  ", "\r\n", "\n\n", "\t", "123456", "...", "//", "/*", " a",
    "Ab", "aB", "ǅ", "é", "e\u0301", "中", "🤗", "\u200d", "\u00a0", "\u3000", "!", "<|end|>",
]  # fmt: skip


@pytest.fixture(scope="module")
def tok(tiny_checkpoint: Path) -> Tokenizer:
    return Tokenizer.from_dir(tiny_checkpoint)


@pytest.fixture(scope="module")
def harmony(harmony_encodings_env: Path) -> oh.HarmonyEncoding:
    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)


@pytest.fixture(scope="module")
def bpe():
    with warnings.catch_warnings():  # bpe-openai reads its data with a deprecated call
        warnings.simplefilter("ignore", DeprecationWarning)
        import bpe_openai

        enc = bpe_openai.get_encoding("o200k_base")
        enc.encode("warm up")
        return enc


def _check_same(text: str, tok: Tokenizer, harmony, bpe) -> None:
    ours = tok.encode(text)
    assert ours == harmony.encode(text, allowed_special=set(), disallowed_special=()), text
    assert ours == bpe.encode(text, disallowed_special=()), text
    assert tok.decode(ours) == text


@pytest.mark.parametrize("text", CORPUS)
def test_encodes_like_harmony_and_bpe_openai(text, tok, harmony, bpe):
    _check_same(text, tok, harmony, bpe)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=st.one_of(
        st.text(max_size=80),
        st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=20).map("".join),
    )
)
def test_encodes_generated_text_like_harmony_and_bpe_openai(text, tok, harmony, bpe):
    _check_same(text, tok, harmony, bpe)


def test_special_token_text_is_plain_text_unless_allowed(tok, harmony):
    text = "<|start|>user<|message|>hi<|end|>"
    plain = tok.encode(text)
    assert not any(tok.is_special(i) for i in plain)
    assert plain == harmony.encode(text, allowed_special=set(), disallowed_special=())
    allowed = tok.encode(text, allow_special=True)
    assert allowed == [tok.start, *tok.encode("user"), tok.message, *tok.encode("hi"), tok.end]
    assert allowed == harmony.encode(text, allowed_special="all")
    assert tok.decode(allowed) == text


def test_special_ids_and_names(tok, harmony):
    assert len(HARMONY_SPECIAL_TOKENS) == 1090
    assert sorted(HARMONY_SPECIAL_TOKENS.values()) == list(range(199998, 201088))
    assert (tok.start, tok.end, tok.message, tok.channel) == (200006, 200007, 200008, 200005)
    assert (tok.constrain, tok.return_, tok.call, tok.endoftext) == (200003, 200002, 200012, 199999)
    assert tok.vocab_size == 201088
    assert tok.special_tokens == HARMONY_SPECIAL_TOKENS
    for name, i in HARMONY_SPECIAL_TOKENS.items():
        assert tok.id_to_token(i) == name
        assert tok.decode([i]) == name
        if i != 200018:
            assert harmony.decode([i]) == name
    # openai-harmony 0.0.8 names 200018 <|reserved_200018|>; tiktoken and the hub call it this.
    assert tok.decode([200018]) == "<|endofprompt|>"
    assert harmony.decode([200018]) in ("<|endofprompt|>", "<|reserved_200018|>")


def test_stream_decoder_never_splits_a_character(tok):
    text = "ok 🤗 日本語 🇫🇷 é\u0301 👩‍👩‍👧 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 end"
    ids = tok.encode(text)
    partial = [i for i in ids if _is_broken_utf8(tok.token_bytes(i))]
    assert partial, "the text should contain tokens that end mid-character"
    stream = tok.stream_decoder()
    pieces = [stream.feed(i) for i in ids]
    pieces.append(stream.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces)  # a piece was held back until its character completed

    stream = tok.stream_decoder()
    first_half = tok.encode("🤗")[:1]
    assert stream.feed(first_half) == ""
    assert stream.flush() == "\ufffd"


def _is_broken_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_tokenizer_json_layout():
    data = build_tokenizer_json()
    assert data["normalizer"] is None
    split, byte_level = data["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"] == {"Regex": O200K_PATTERN} and split["behavior"] == "Isolated"
    assert byte_level == {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": False,
    }
    assert data["decoder"]["type"] == "ByteLevel"
    model = data["model"]
    assert model["type"] == "BPE" and model["ignore_merges"] is False
    assert len(model["vocab"]) == 199998
    assert len(model["merges"]) == 199998 - 256  # one per multi-byte token
    assert model["vocab"]["Ġhello"] == 40617
    added = data["added_tokens"]
    assert [(t["id"], t["content"]) for t in added] == [
        (i, n) for n, i in HARMONY_SPECIAL_TOKENS.items()
    ]
    assert all(t["special"] and not t["normalized"] for t in added)


def test_pattern_is_bpe_openais():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from bpe_openai import registry

        assert registry.o200k_base()["pat_str"] == O200K_PATTERN


def test_derived_tiktoken_file_equals_the_original(tiny_checkpoint, tmp_path):
    original = gzip.decompress(find_o200k_base().read_bytes())
    out = tmp_path / "o200k_base.tiktoken"
    write_tiktoken_base(tiny_checkpoint / "tokenizer.json", out)
    assert out.read_bytes() == original


def test_encodings_dir_is_in_the_user_cache_never_beside_the_model(
    tiny_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "tokenizer.json").symlink_to(tiny_checkpoint / "tokenizer.json")
    folder = harmony_encodings_dir(model)
    assert folder.parent == tmp_path / "cache" / "gptoss" / "encodings"
    assert harmony_encodings_dir(model) == folder  # reused
    assert [p.name for p in model.iterdir()] == ["tokenizer.json"]  # the model folder untouched
    original = gzip.decompress(find_o200k_base().read_bytes())
    assert (folder / "o200k_base.tiktoken").read_bytes() == original


def test_foreign_tokenizer_is_refused(tmp_path):
    data = {"model": {"vocab": {"a": 0, "b": 1, "ab": 2}}, "added_tokens": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    assert tiktoken_base_bytes(tmp_path / "tokenizer.json") == b"YQ== 0\nYg== 1\nYWI= 2\n"
    with pytest.raises(BadCheckpointError, match="not the o200k_harmony"):
        harmony_encodings_dir(tmp_path)
    with pytest.raises(BadCheckpointError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path / "nowhere")
