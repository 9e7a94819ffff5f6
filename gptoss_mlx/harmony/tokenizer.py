"""The o200k_harmony tokenizer of gpt-oss: building its tokenizer.json, and encoding with it.

Encoding runs on the Hugging Face `tokenizers` library (transformers is not imported: it costs
seconds). openai-harmony needs the raw `o200k_base.tiktoken` file, which is derived from a
model's tokenizer.json so that nothing is downloaded at run time.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import importlib.util
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from .. import paths
from ..errors import BadCheckpointError, UserError
from ..fsutil import atomic_write_bytes
from .tokens import NAMED_SPECIALS

O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
# openai-harmony refuses an o200k_base.tiktoken with any other hash.
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_BASE_VOCAB = 199_998
TIKTOKEN_FILE = "o200k_base.tiktoken"

_NAMED_IDS = set(NAMED_SPECIALS.values())
# As in openai/gpt-oss-20b's tokenizer.json: every id 199998..201087 is a special token.
HARMONY_SPECIAL_TOKENS: dict[str, int] = dict(
    sorted(
        {
            **NAMED_SPECIALS,
            **{f"<|reserved_{i}|>": i for i in range(199998, 201088) if i not in _NAMED_IDS},
        }.items(),
        key=lambda kv: kv[1],
    )
)

# Bump when build_tokenizer_json's output changes, so cached copies are rebuilt.
_BUILD_VERSION = 1


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _to_unicode(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def _to_bytes(token: str) -> bytes:
    table = _unicode_to_bytes()
    return bytes(table[c] for c in token)


def find_o200k_base() -> Path:
    """The o200k_base.tiktoken.gz shipped inside the bpe-openai package."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bpe-openai package is not installed (pip install bpe-openai)")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "o200k_base.tiktoken.gz"
        if path.is_file():
            return path
    raise FileNotFoundError("bpe-openai is installed but has no data/o200k_base.tiktoken.gz")


def _read_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def load_tiktoken_ranks(path: Path) -> list[bytes]:
    """Token bytes in rank order from a .tiktoken file (gzipped or not)."""
    tokens: list[bytes] = []
    for line in _read_maybe_gz(path).splitlines():
        if not line:
            continue
        b64, rank = line.split()
        if int(rank) != len(tokens):
            raise ValueError(f"{path}: ranks are not consecutive at {rank.decode()}")
        tokens.append(base64.b64decode(b64))
    return tokens


def bpe_merges(tokens: list[bytes]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order: the two parts BPE reaches on its bytes
    using only lower ranks. Merging by this order reproduces tiktoken's rank-order BPE."""
    ranks = {t: r for r, t in enumerate(tokens)}
    get = ranks.get
    merges: list[tuple[bytes, bytes]] = []
    for r, token in enumerate(tokens):
        n = len(token)
        if n < 2:
            continue
        parts = [token[i : i + 1] for i in range(n)]
        while len(parts) > 2:
            best, at = r, -1
            for i in range(len(parts) - 1):
                rank = get(parts[i] + parts[i + 1])
                if rank is not None and rank < best:
                    best, at = rank, i
            if at < 0:
                raise ValueError(f"token {r} ({token!r}) cannot be reached by merging lower ranks")
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def _tokenizer_json(tokens: list[bytes]) -> dict:
    vocab = {_to_unicode(t): r for r, t in enumerate(tokens)}
    merges = [f"{_to_unicode(a)} {_to_unicode(b)}" for a, b in bpe_merges(tokens)]
    added = [
        {
            "id": i,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for name, i in HARMONY_SPECIAL_TOKENS.items()
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": O200K_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


def tokenizer_json_path(o200k_base: Path | None = None) -> Path:
    """The cached tokenizer.json built from o200k_base (default: bpe-openai's copy)."""
    source = Path(o200k_base) if o200k_base is not None else find_o200k_base()
    digest = hashlib.sha256(_read_maybe_gz(source)).hexdigest()[:16]
    out = paths.cache_dir() / "tokenizer" / f"o200k_harmony-v{_BUILD_VERSION}-{digest}.json"
    if not out.is_file():
        text = json.dumps(_tokenizer_json(load_tiktoken_ranks(source)), ensure_ascii=False)
        atomic_write_bytes(out, text.encode("utf-8"))
    return out


def build_tokenizer_json(o200k_base: Path | None = None) -> dict:
    """The Hugging Face tokenizers JSON of o200k_harmony (cached; the first build takes seconds)."""
    return json.loads(tokenizer_json_path(o200k_base).read_text(encoding="utf-8"))


def tiktoken_base_bytes(tokenizer_json: Path) -> bytes:
    """o200k_base.tiktoken content (`base64(token) rank` lines) from a byte-level tokenizer.json."""
    try:
        data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
        vocab: dict[str, int] = data["model"]["vocab"]
        specials = {t["id"] for t in data.get("added_tokens", [])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadCheckpointError(f"cannot read the vocabulary of {tokenizer_json} ({err})") from err
    by_rank: dict[int, str] = {r: s for s, r in vocab.items() if r not in specials}
    if sorted(by_rank) != list(range(len(by_rank))):
        raise BadCheckpointError(f"{tokenizer_json}: vocabulary ranks are not 0..N-1")
    try:
        lines = [
            base64.b64encode(_to_bytes(by_rank[r])) + b" %d\n" % r for r in range(len(by_rank))
        ]
    except KeyError as err:
        raise BadCheckpointError(f"{tokenizer_json} is not a byte-level BPE vocabulary") from err
    return b"".join(lines)


def write_tiktoken_base(tokenizer_json: Path, out: Path) -> None:
    """Write o200k_base.tiktoken derived from a model's tokenizer.json, atomically."""
    atomic_write_bytes(out, tiktoken_base_bytes(tokenizer_json))


def harmony_encodings_dir(model_dir: Path) -> Path:
    """A folder holding o200k_base.tiktoken for openai-harmony (TIKTOKEN_ENCODINGS_BASE).

    Derived from the model's tokenizer.json and kept in the user cache dir, never in the model's
    own folder (which may be read-only, or a snapshot in the hub's cache).
    """
    model_dir = Path(model_dir)
    source = model_dir / "tokenizer.json"
    if not source.is_file():
        raise BadCheckpointError(f"{model_dir} has no tokenizer.json; download the model again")
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise BadCheckpointError(f"cannot read {source}: {e.strerror}") from e
    cached = paths.cache_dir() / "encodings" / digest
    if (cached / TIKTOKEN_FILE).is_file():
        return cached
    content = tiktoken_base_bytes(source)
    if hashlib.sha256(content).hexdigest() != O200K_BASE_SHA256:
        raise BadCheckpointError(
            f"{source} is not the o200k_harmony tokenizer of gpt-oss; download the model again"
        )
    try:
        atomic_write_bytes(cached / TIKTOKEN_FILE, content)
    except OSError as e:
        raise CacheNotWritable(
            f"cannot write to the cache dir {paths.cache_dir()} ({e.strerror or e});"
            " make it writable or set XDG_CACHE_HOME to a folder you can write to",
            content,
        ) from e
    return cached


class CacheNotWritable(UserError):
    """The derived vocabulary could not be kept; `content` is it, for a temporary folder."""

    def __init__(self, message: str, content: bytes) -> None:
        super().__init__(message)
        self.content = content


class Tokenizer:
    """o200k_harmony over a tokenizer.json. `encode` treats special-token text as plain text."""

    def __init__(self, tokenizer_json: Path | str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.path = Path(tokenizer_json)
        try:
            self._tok = HFTokenizer.from_file(str(self.path))
        except Exception as err:  # tokenizers raises a bare Exception on bad files
            raise BadCheckpointError(f"cannot load {self.path}: {err}") from err
        # Special-token strings in user text are ordinary text, as openai-harmony encodes them.
        self._tok.encode_special_tokens = True
        self._specials: dict[str, int] = {
            t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special
        }
        missing = [s for s in NAMED_SPECIALS if self._specials.get(s) != NAMED_SPECIALS[s]]
        if missing:
            raise BadCheckpointError(f"{self.path} lacks harmony special tokens {missing}")
        self._special_ids = frozenset(self._specials.values())
        self._special_re = re.compile(
            "|".join(re.escape(s) for s in sorted(self._specials, key=len, reverse=True))
        )
        self._bytes: list[bytes] | None = None

    @classmethod
    def from_dir(cls, model_dir: Path | str) -> Tokenizer:
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise BadCheckpointError(f"{model_dir} has no tokenizer.json; download the model again")
        return cls(path)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`; with allow_special, `<|...|>` special-token strings become their ids."""
        if not allow_special:
            return self._tok.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                ids += self._tok.encode(text[pos : m.start()], add_special_tokens=False).ids
            ids.append(self._specials[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += self._tok.encode(text[pos:], add_special_tokens=False).ids
        return ids

    def _token_bytes(self) -> list[bytes]:
        if self._bytes is None:
            table: list[bytes] = [b""] * self.vocab_size
            for s, i in self._tok.get_vocab(with_added_tokens=False).items():
                table[i] = _to_bytes(s)
            for s, i in self._specials.items():
                table[i] = s.encode("utf-8")
            self._bytes = table
        return self._bytes

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes()[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._token_bytes()
        return b"".join(table[i] for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, special tokens included; invalid UTF-8 becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary string of an id (byte-level form, e.g. 'Ġhello'), or None."""
        return self._tok.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    @property
    def start(self) -> int:
        return self._specials["<|start|>"]

    @property
    def end(self) -> int:
        return self._specials["<|end|>"]

    @property
    def message(self) -> int:
        return self._specials["<|message|>"]

    @property
    def channel(self) -> int:
        return self._specials["<|channel|>"]

    @property
    def constrain(self) -> int:
        return self._specials["<|constrain|>"]

    @property
    def return_(self) -> int:
        return self._specials["<|return|>"]

    @property
    def call(self) -> int:
        return self._specials["<|call|>"]

    @property
    def endoftext(self) -> int:
        return self._specials["<|endoftext|>"]

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Incremental detokenizer: text comes out as soon as it is whole UTF-8, never half a character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: int | Iterable[int]) -> str:
        if isinstance(ids, int):
            ids = (ids,)
        return self._utf8.decode(self._tokenizer.decode_bytes(ids), final=False)

    def flush(self) -> str:
        """The rest at the end of a stream (an unfinished character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)

    def reset(self) -> None:
        self._utf8.reset()
