"""CLIP's byte-level BPE tokenizer, giving open_clip's token ids without importing torch.

A text query needs its token ids before it needs a model, and importing open_clip (which imports
torch) costs seconds. This module reproduces `open_clip.tokenizer.SimpleTokenizer` as
`open_clip.get_tokenizer("ViT-B-32")` builds it: the 'lower' cleaning, no reduction mask, and
plain truncation. It reads the merges file shipped inside the installed open_clip package, located
with `importlib.util.find_spec`, which finds a package without running it.

    tokens = load_tokenizer()(["a dog on a beach", "a red car"])   # int64, shape (2, 77)
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.util
import marshal
import math
import re
import sys
from collections.abc import Sequence
from functools import lru_cache
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

import numpy as np

from index.atomic import write_bytes_atomic

from ..cache import cache_dir
from .errors import ModelLoadError

VOCABULARY_FILE = "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_CONTEXT_LENGTH = 77

START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"

# CLIP uses the first 48,894 merges of the file (49,152 - 256 - 2, as the reference code counts);
# the ones after are never used. Its vocabulary is then 49,408 strings: the 256 byte symbols, their
# 256 end-of-word forms, the merged strings in rank order, and the two special tokens.
_MERGE_COUNT = 49152 - 256 - 2
_VOCABULARY_SIZE = 2 * 256 + _MERGE_COUNT + 2
_SPECIAL = (START_OF_TEXT, END_OF_TEXT)
_END_OF_WORD = "</w>"

# A piece is a special token, an English contraction suffix, a run of letters, one digit, or a
# run of anything else but whitespace. IGNORECASE still matters on lower-cased text, since
# matching goes by case folding: U+0345 (a combining mark that folds to iota) counts as a letter,
# and "<\u017ftart_of_text>" (long s folds to s) is one piece, as they are in open_clip.
_PIECE_ALTERNATIVES = [
    START_OF_TEXT,
    END_OF_TEXT,
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    r"\p{L}+",
    r"\p{N}",
    r"[^\s\p{L}\p{N}]+",
]

# The same pieces on plain ASCII text once lower-cased, for the standard `re`: letters are a-z,
# digits 0-9. Importing ftfy and `regex` costs a cold query about a tenth of a second; text that
# is printable ASCII (tabs and newlines allowed) without '&' needs neither, since ftfy leaves it
# as it is (no mojibake, HTML entity, control character, terminal escape or \r to fix) and
# html.unescape changes nothing without '&'.
_ASCII_PIECE = re.compile("|".join([*map(re.escape, _PIECE_ALTERNATIVES[:9]), "[a-z]+", "[0-9]",
                                     r"[^\sa-z0-9]+"]))  # fmt: skip
_PLAIN_ASCII = re.compile(r"[\t\n\x20-\x25\x27-\x7e]*")

# Words seen by one tokenizer are remembered; past this many the memory is dropped and regrown,
# so a long-running service fed arbitrary queries stays bounded.
_WORD_CACHE_LIMIT = 200_000


def vocabulary_file() -> Path:
    """The path of open_clip's BPE merges file, found without importing open_clip (or torch)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / VOCABULARY_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"The CLIP tokenizer's vocabulary file {VOCABULARY_FILE} was not found: "
        "it ships with the open_clip_torch package, which is not installed or is incomplete."
    )


def _byte_symbols() -> list[str]:
    """One printable character per byte value (256 of them), indexed by the byte.

    BPE runs on strings, so each byte of the UTF-8 text becomes a character: printable Latin-1
    bytes stand for themselves, and the rest (controls, space, soft hyphen) take the code points
    from 256 upwards, in byte order, so that no symbol is whitespace.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {byte: chr(byte) for byte in printable}
    others = (byte for byte in range(256) if byte not in symbols)
    symbols.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return [symbols[byte] for byte in range(256)]


Tables = tuple[list[str], dict[str, int], dict[tuple[str, str], int]]

TABLES_VERSION = 2
"""Part of the stored tables' key: change it when what is stored changes."""


class LazyTables:
    """The byte symbols, the id of each vocabulary string and the rank of each merge, unpacked
    a bucket at a time as words need them.

    A merge (a, b) is in the bucket of the first two characters of a + b, and a vocabulary
    string of two or more characters in the bucket of its first two: every merge and token a
    word can use has its bucket among the word's own pairs of adjacent characters (its symbols
    joined, '</w>' included). Byte symbols and special tokens are always there. Unpacking all
    48,894 merges takes a cold query 0.05 to 0.1 s; a query needs a few dozen buckets of
    some 5,000.
    """

    def __init__(self, byte_symbols: list[str], ids: dict[str, int], buckets: dict[str, bytes]):
        self.byte_symbols = byte_symbols
        self.ids = dict(ids)
        self.ranks: dict[tuple[str, str], int] = {}
        self._buckets = buckets
        self._unpacked: set[str] = set()

    def unpack(self, word: str) -> None:
        """Make the merges and tokens of word (its symbols joined) available."""
        for i in range(len(word) - 1):
            key = word[i : i + 2]
            if key not in self._unpacked:
                blob = self._buckets.get(key)
                if blob is not None:
                    ranks, ids = marshal.loads(blob)
                    self.ranks.update(ranks)
                    self.ids.update(ids)
                # Marked after the update: a thread that sees the mark sees the entries.
                self._unpacked.add(key)

    def full(self) -> Tables:
        """All of the tables."""
        for key in list(self._buckets):
            self.unpack(key)
        return self.byte_symbols, self.ids, self.ranks


def packed(tables: Tables) -> tuple[list[str], dict[str, int], dict[str, bytes]]:
    """The tables as LazyTables reads them: (byte symbols, always-there ids, buckets)."""
    byte_symbols, ids, ranks = tables
    base = {token: i for token, i in ids.items() if len(token) == 1 or token in _SPECIAL}
    buckets: dict[str, tuple[dict[tuple[str, str], int], dict[str, int]]] = {}
    for pair, rank in ranks.items():
        buckets.setdefault((pair[0] + pair[1])[:2], ({}, {}))[0][pair] = rank
    for token, i in ids.items():
        if token not in base:
            buckets.setdefault(token[:2], ({}, {}))[1][token] = i
    return byte_symbols, base, {key: marshal.dumps(bucket) for key, bucket in buckets.items()}


@lru_cache(maxsize=1)
def _tables() -> LazyTables:
    """The tables, read once; every tokenizer shares them whatever its context length.

    Building them from the merges file takes a cold query a sixth of a second; they are stored
    in the cache directory, keyed by the file's path, size and modification time and by the
    Python version (marshal's format), and read back in bucket form (see LazyTables).
    """
    vocabulary = vocabulary_file()
    stored = _stored_tables_path(vocabulary)
    tables = _read_stored_tables(stored)
    if tables is None:
        tables = packed(_build_tables(vocabulary))
        _store_tables(stored, tables)
    return LazyTables(*tables)


def _stored_tables_path(vocabulary: Path) -> Path:
    stat = vocabulary.stat()
    key = f"{vocabulary.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode(
        "utf-8", "surrogateescape"
    )
    digest = hashlib.sha256(key).hexdigest()[:24]
    python = "".join(map(str, sys.version_info[:2]))
    return cache_dir() / "tokenizer" / f"{digest}-v{TABLES_VERSION}-py{python}.marshal"


def _read_stored_tables(path: Path) -> tuple[list[str], dict[str, int], dict[str, bytes]] | None:
    """The stored tables, or None if there are none or they are not whole (then rebuilt)."""
    try:
        tables = marshal.loads(path.read_bytes())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if not (isinstance(tables, tuple) and len(tables) == 4 and tables[3] == _VOCABULARY_SIZE):
        return None
    byte_symbols, base, buckets, _ = tables
    if len(byte_symbols) != 256 or not isinstance(base, dict) or not isinstance(buckets, dict):
        return None
    return list(byte_symbols), base, buckets


def _store_tables(path: Path, tables: tuple[list[str], dict[str, int], dict[str, bytes]]) -> None:
    """Best effort: a cache that cannot be written costs the next query the build, no more."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, marshal.dumps((*tables, _VOCABULARY_SIZE)))
    except OSError:
        return


def _build_tables(vocabulary_path: Path) -> Tables:
    """The tables from the merges file itself."""
    # Only the first lines are needed, so the rest of the file is never decompressed; the first
    # line is a version header.
    with gzip.open(vocabulary_path, "rt", encoding="utf-8", newline="\n") as stream:
        lines = list(islice(stream, 1 + _MERGE_COUNT))
    merges = [tuple(line.split()) for line in lines[1:]]
    byte_symbols = _byte_symbols()
    # Ids follow the symbols' code points, not their bytes: the printable bytes come first.
    alphabet = sorted(byte_symbols)
    vocabulary = [
        *alphabet,
        *(symbol + _END_OF_WORD for symbol in alphabet),
        *("".join(merge) for merge in merges),
        START_OF_TEXT,
        END_OF_TEXT,
    ]
    ids = {token: index for index, token in enumerate(vocabulary)}
    ranks = {(merge[0], merge[1]): rank for rank, merge in enumerate(merges)}
    return byte_symbols, ids, ranks


def _clean(text: str) -> str:
    """open_clip's 'lower' cleaning: fix mojibake, unescape HTML twice, squeeze spaces, lower."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def is_plain_ascii(text: str) -> bool:
    """Whether text takes the ASCII path: printable ASCII, tabs and newlines, and no '&'."""
    return _PLAIN_ASCII.fullmatch(text) is not None


@lru_cache(maxsize=1)
def _unicode_piece() -> Any:
    """The pieces of any cleaned text, with `regex` (Unicode letter and number classes)."""
    import regex

    special = [regex.escape(token) for token in _PIECE_ALTERNATIVES[:2]]
    return regex.compile("|".join([*special, *_PIECE_ALTERNATIVES[2:]]), regex.IGNORECASE)


def pieces(text: str) -> list[str]:
    """The pieces of text that BPE encodes one by one, after open_clip's cleaning."""
    if is_plain_ascii(text):
        return _ASCII_PIECE.findall(" ".join(text.split()).lower())
    return reference_pieces(text)


def reference_pieces(text: str) -> list[str]:
    """As pieces, always through ftfy and `regex`, as open_clip does it."""
    return _unicode_piece().findall(_clean(text))


def _merge(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to one word's symbols until no adjacent pair is a known merge.

    Each round takes the adjacent pair of lowest rank and merges its occurrences left to right,
    never overlapping ("a a a" becomes "aa a"), as CLIP's reference implementation does.
    """
    unknown = math.inf
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, unknown), pair) for pair in pairwise(symbols)]
        rank, (first, second) = min(pairs)
        if rank == unknown:
            break
        merged: list[str] = []
        i = 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


class ClipTokenizer:
    """CLIP's tokenizer, id for id what open_clip's standard SimpleTokenizer returns, as numpy."""

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1, not {context_length}.")
        self.context_length = context_length
        self._tables = _tables()
        self._ids, self._ranks = self._tables.ids, self._tables.ranks
        # Maps each character of a latin-1 decoded byte string to its byte symbol.
        self._byte_table = dict(enumerate(self._tables.byte_symbols))
        self.sot_id = self._ids[START_OF_TEXT]
        self.eot_id = self._ids[END_OF_TEXT]
        self.vocab_size = _VOCABULARY_SIZE
        self._words: dict[str, tuple[int, ...]] = {}

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token ids of each text, int64 of shape (len(texts), context_length); a str is one text.

        Each row is sot, the text's ids, eot, then zeros. A row too long is cut to the context
        length and its last id replaced by eot, so the model always sees an end of text.
        """
        if isinstance(texts, str):
            texts = [texts]
        rows = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in zip(rows, texts, strict=True):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            row[: len(ids)] = ids
        return rows

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, cleaned first, without sot or eot (as SimpleTokenizer.encode)."""
        ids: list[int] = []
        for piece in pieces(text):
            word = self._words.get(piece)
            if word is None:
                word = self._encode_word(piece)
                if len(self._words) >= _WORD_CACHE_LIMIT:
                    self._words.clear()
                self._words[piece] = word
            ids.extend(word)
        return ids

    def _encode_word(self, piece: str) -> tuple[int, ...]:
        """Ids of one piece of text: a special token's own id, else the BPE of its UTF-8 bytes."""
        if piece in (START_OF_TEXT, END_OF_TEXT):
            return (self._ids[piece],)
        joined = piece.encode("utf-8").decode("latin-1").translate(self._byte_table)
        self._tables.unpack(joined + _END_OF_WORD)
        symbols = list(joined)
        symbols[-1] += _END_OF_WORD
        return tuple(self._ids[token] for token in _merge(symbols, self._ranks))


def up_to_last_end(tokens: Any) -> Any:
    """Token ids (n, context), a numpy array or a torch tensor, without the columns after the
    last end-of-text token of any row.

    The end token has the highest id of CLIP's vocabulary and only padding follows it, so it is
    each row's largest value. A causal text tower pooled at that token gives the same embedding
    for the cut ids at a fraction of the work (encoders.text_tower): a query of a few words is
    about a tenth of the context.
    """
    if tokens.shape[0] == 0:
        return tokens
    return tokens[:, : int(tokens.argmax(axis=1).max()) + 1]


def load_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> ClipTokenizer:
    """The shared tokenizer for `context_length`; the vocabulary is read once for all of them."""
    # The cache is keyed by the value alone: lru_cache would hold load_tokenizer() and
    # load_tokenizer(77) apart, each with its own memory of words.
    return _shared_tokenizer(context_length)


@lru_cache(maxsize=8)
def _shared_tokenizer(context_length: int) -> ClipTokenizer:
    return ClipTokenizer(context_length)
