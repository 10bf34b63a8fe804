"""The torch-free CLIP tokenizer gives exactly open_clip's ids, on a wide corpus and fuzz."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval.encoders import tokenizer as tokenizer_module
from retrieval.encoders.errors import ModelLoadError
from retrieval.encoders.tokenizer import ClipTokenizer, load_tokenizer

REPO = Path(__file__).resolve().parent.parent

PLAIN = [
    "a dog",
    "a photo of a dog on a beach",
    "two cats sleeping on a red sofa next to the window",
    "the quick brown fox jumps over the lazy dog",
    "a",
    "I",
    "supercalifragilisticexpialidocious",
    "hahahahahahahahaha",
    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    "a" * 200,
    "aaa aaaa aaaaa",
    "snake_case_word and kebab-case-word",
]
CAPITALS = ["A DOG ON A BEACH", "CamelCaseWord", "iPhone and iPad", "McDonald's", "NASA JPL"]
PUNCTUATION = [
    "Hello, world!",
    "!!!???...",
    "a--b---c",
    "(parens) [brackets] {braces} <angles>",
    "#hashtag @user",
    "http://example.com/a/b?c=d&e=f#frag",
    "C++ & C# & F#",
    "<b>bold</b>",
    "$100.00 \u20ac50 \u00a320 \u00a51000",
    "50% off!",
    "~`^|\\/",
    "\"quoted\" 'single'",
    "\u201ccurly quotes\u201d and \u2018single\u2019",
    "em\u2014dash en\u2013dash",
    "...",
    "'",
]
NUMBERS = [
    "2024",
    "3.14159",
    "1,000,000",
    "room 101, floor 7",
    "\u0663\u0664 Arabic-Indic digits",
    "\u2460 circled one",
    "\u00bd and \u00be",
    "\u216b roman twelve",
    "\u00b2 superscript",
    "x1y2z3",
]
CONTRACTIONS = [
    "don't",
    "it's",
    "we're",
    "they've",
    "I'm",
    "you'll",
    "he'd",
    "DON'T STOP",
    "it\u2019s curly",
    "rock 'n' roll",
    "''''",
    "'s",
    "the dog's bone",
    "it's'",
    "'tis",
]
LETTERS = [
    "na\u00efve caf\u00e9 r\u00e9sum\u00e9",
    "Stra\u00dfe",
    "\u01c5 titlecase",
    "\u0130stanbul",
    "\u0391\u0398\u0397\u039d\u0391",
    "\u041c\u043e\u0441\u043a\u0432\u0430",
    "\u05e2\u05d1\u05e8\u05d9\u05ea",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\u0939\u093f\u0928\u094d\u0926\u0940",
    "\u0e44\u0e17\u0e22",
    "\ud55c\uad6d\uc5b4",
    "\ufb01ne ligature",
    "\uff26\uff35\uff2c\uff2c\uff37\uff29\uff24\uff34\uff28",
    "e\u0301 combining acute",
    "\u212a kelvin sign",
    "\u017f long s",
    "\u0131 dotless i",
    "\u03b1\u0345 a\u0345b",
    "it'\u017f",
    "\u00c5ngstr\u00f6m",
]
CJK = [
    "\u4e00\u53ea\u72d7\u5728\u6d77\u6ee9\u4e0a",
    "\u72ac\u304c\u8d70\u3063\u3066\u3044\u308b",
    "\u4e2d\u6587 English \u6df7\u5408",
]
EMOJI = [
    "\U0001f436",
    "a dog \U0001f415 on the beach \U0001f3d6\ufe0f",
    "\U0001f44d\U0001f3fd",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "\U0001f1eb\U0001f1f7\U0001f1ef\U0001f1f5",
    "\U0001f3f3\ufe0f\u200d\U0001f308",
    "\u2764\ufe0f",
    "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "1\ufe0f\u20e3",
    "\U0001f600\U0001f600\U0001f600",
]
HTML = [
    "fish &amp; chips",
    "&lt;b&gt;bold&lt;/b&gt;",
    "it&#39;s",
    "&amp;amp;",
    "&amp;lt;",
    "&amp;amp;amp;",
    "a&nbsp;b",
    "&#x1F600;",
    "&copy; 2024",
    "&notit;",
    "&unknown;",
    # ftfy unescapes entities itself unless the text looks like HTML; then both rounds count.
    "<p>&amp;amp;</p>",
    "<b>&amp;lt;</b>",
    "<i>&amp;amp;amp;</i> &lt;",
]
MOJIBAKE = [
    "caf\u00c3\u00a9",
    "\u00c3\u00bcber",
    "The Mona Lisa doesn\u00c3\u00a2\u00e2\u201a\u00ac\u00e2\u201e\u00a2t have eyebrows.",
    "\u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d",
    "\u00e2\u20ac\u2122",
    "\u00c3\u00a0 la carte",
]
WHITESPACE = [
    "",
    " ",
    "   ",
    "a\tdog",
    "a\ndog\n",
    "a\r\ndog",
    "  multiple   spaces  ",
    "ideographic\u3000space",
    "line\u2028separator",
    "\x0b\x0cvertical",
    "\x1cfile\x1dgroup\x1erecord\x1funit",
    "\u00a0nbsp\u00a0",
    "\u200bzero width",
    "\ufeffbom",
]
ODD = [
    "\x00null",
    "\x07bell",
    "\ufffd",
    "a\ud800b",
    "\ud83d\ude00",
    "\U0010ffff",
    "\ue000 private use",
    "\u00ad soft hyphen",
    "<start_of_text>",
    "a <end_of_text> b",
    "<start_of_text><end_of_text>",
    "<START_OF_TEXT>",
    "<\u017ftart_of_text>",
    "<start_of_text",
]

# (lowest, highest) code points drawn from by the fuzz.
RANGES = [
    (0x00, 0x1F),
    (0x20, 0x7E),
    (0x20, 0x7E),
    (0xA0, 0xFF),
    (0x100, 0x24F),
    (0x300, 0x36F),
    (0x370, 0x4FF),
    (0x600, 0x6FF),
    (0x900, 0x97F),
    (0x2000, 0x2BFF),
    (0x3040, 0x30FF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0xFE00, 0xFE0F),
    (0xFF00, 0xFFEF),
    (0x1F300, 0x1FAFF),
    (0x200D, 0x200D),
]


def fuzz(count: int, seed: int) -> list[str]:
    """`count` random strings mixing a few Unicode ranges, spaces and apostrophes."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        ranges = rng.sample(RANGES, rng.randint(1, 3))
        chars = []
        for _ in range(rng.randint(1, 30)):
            roll = rng.random()
            if roll < 0.1:
                chars.append(" ")
            elif roll < 0.13:
                chars.append("'")
            else:
                low, high = rng.choice(ranges)
                chars.append(chr(rng.randint(low, high)))
        texts.append("".join(chars))
    return texts


def mojibake_fuzz(texts: list[str]) -> list[str]:
    """Texts whose UTF-8 bytes were misread as Windows-1252 or Latin-1, for ftfy to undo."""
    misread = []
    for n, text in enumerate(texts):
        encoding = "windows-1252" if n % 2 else "latin-1"
        misread.append(text.encode("utf-8").decode(encoding, errors="replace"))
    return misread


def long_text(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocabulary = [*PLAIN[3].split(), "beach", "caf\u00e9", "don't", "42", "\U0001f436", "&amp;"]
    return " ".join(rng.choice(vocabulary) for _ in range(words))


LONG = [long_text(300), long_text(800, seed=1), "word " * 76, "word " * 75, "word " * 74]
FUZZ = fuzz(300, seed=20240611)
CORPUS = [
    *PLAIN,
    *CAPITALS,
    *PUNCTUATION,
    *NUMBERS,
    *CONTRACTIONS,
    *LETTERS,
    *CJK,
    *EMOJI,
    *HTML,
    *MOJIBAKE,
    *WHITESPACE,
    *ODD,
    *LONG,
    *FUZZ,
    *mojibake_fuzz(FUZZ[:100]),
]


@pytest.fixture(scope="module")
def reference():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")


def mismatches(ours: np.ndarray, theirs: np.ndarray, texts: list[str]) -> list[str]:
    return [
        text for text, a, b in zip(texts, ours, theirs, strict=True) if not np.array_equal(a, b)
    ]


def test_vocabulary_is_open_clips(reference) -> None:
    _, ids, ranks = tokenizer_module._tables().full()
    assert ids == reference.encoder
    assert ranks == reference.bpe_ranks
    tokenizer = load_tokenizer()
    assert (tokenizer.sot_id, tokenizer.eot_id) == (reference.sot_token_id, reference.eot_token_id)
    assert tokenizer.vocab_size == reference.vocab_size


def test_ids_match_open_clip(reference) -> None:
    ours = load_tokenizer()(CORPUS)
    theirs = reference(CORPUS).numpy()
    assert ours.dtype == np.int64
    assert ours.shape == theirs.shape == (len(CORPUS), 77)
    assert mismatches(ours, theirs, CORPUS) == []


def test_encode_matches_open_clip(reference) -> None:
    tokenizer = load_tokenizer()
    wrong = [text for text in CORPUS if tokenizer.encode(text) != reference.encode(text)]
    assert wrong == []


@pytest.mark.parametrize("context_length", [32, 16, 1])
def test_other_context_lengths_match_open_clip(reference, context_length: int) -> None:
    ours = load_tokenizer(context_length)(CORPUS)
    theirs = reference(CORPUS, context_length=context_length).numpy()
    assert ours.shape == (len(CORPUS), context_length)
    assert mismatches(ours, theirs, CORPUS) == []


def test_long_text_is_cut_with_eot_last(reference) -> None:
    tokenizer = load_tokenizer()
    rows = tokenizer(LONG[:2])
    assert len(tokenizer.encode(LONG[0])) > 77
    assert (rows[:, 0] == tokenizer.sot_id).all()
    assert (rows[:, -1] == tokenizer.eot_id).all()
    assert (rows != 0).all()
    np.testing.assert_array_equal(rows, reference(LONG[:2]).numpy())


def test_exact_fit_is_not_cut() -> None:
    tokenizer = load_tokenizer()
    # "word " * 75 is 75 tokens: with sot and eot it fills 77 exactly.
    row = tokenizer("word " * 75)[0]
    assert row[-1] == tokenizer.eot_id
    assert (row[1:-1] == tokenizer.encode("word")[0]).all()


def test_a_string_is_one_row_and_empty_input_none() -> None:
    tokenizer = load_tokenizer()
    np.testing.assert_array_equal(tokenizer("a dog"), tokenizer(["a dog"]))
    assert tokenizer([]).shape == (0, 77)
    empty = tokenizer("")[0]
    assert list(empty[:3]) == [tokenizer.sot_id, tokenizer.eot_id, 0]


def test_word_cache_overflow_keeps_ids(reference, monkeypatch) -> None:
    monkeypatch.setattr(tokenizer_module, "_WORD_CACHE_LIMIT", 3)
    texts = CORPUS[:80]
    np.testing.assert_array_equal(ClipTokenizer()(texts), reference(texts).numpy())


def test_load_tokenizer_is_shared_per_context_length() -> None:
    assert load_tokenizer() is load_tokenizer(77)
    assert load_tokenizer(32) is not load_tokenizer()
    assert load_tokenizer(32).context_length == 32


def test_context_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="context_length"):
        ClipTokenizer(0)


def test_missing_open_clip_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"vocabulary file .* was not found"):
        tokenizer_module.vocabulary_file()


def test_tokenizing_imports_neither_torch_nor_open_clip() -> None:
    code = (
        "import sys; import retrieval.encoders.tokenizer as t; t.load_tokenizer()(['a dog']); "
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('torch', 'open_clip')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def fresh_tables(tmp_path, monkeypatch):
    """A cache directory of the test's own and no tables in memory; restored after."""
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path))
    tokenizer_module._tables.cache_clear()
    yield tmp_path
    tokenizer_module._tables.cache_clear()


def test_stored_tables_give_open_clips_ids(reference, fresh_tables, monkeypatch) -> None:
    ClipTokenizer()  # builds the tables from the merges file and stores them
    stored = list((fresh_tables / "tokenizer").iterdir())
    assert len(stored) == 1
    tokenizer_module._tables.cache_clear()

    def no_build(path: Path) -> None:
        raise AssertionError("the stored tables were not used")

    monkeypatch.setattr(tokenizer_module, "_build_tables", no_build)
    ours = ClipTokenizer()(CORPUS)
    assert mismatches(ours, reference(CORPUS).numpy(), CORPUS) == []
    _, ids, ranks = tokenizer_module._tables().full()
    assert ids == reference.encoder
    assert ranks == reference.bpe_ranks


def test_damaged_stored_tables_are_rebuilt(reference, fresh_tables) -> None:
    ClipTokenizer()
    (stored,) = (fresh_tables / "tokenizer").iterdir()
    stored.write_bytes(stored.read_bytes()[: stored.stat().st_size // 2])
    tokenizer_module._tables.cache_clear()
    ours = ClipTokenizer()(CORPUS)
    assert mismatches(ours, reference(CORPUS).numpy(), CORPUS) == []
    tokenizer_module._tables.cache_clear()
    assert tokenizer_module._read_stored_tables(stored) is not None  # whole again


def ascii_fuzz(count: int, seed: int) -> list[str]:
    """Random ASCII texts: words, digits, punctuation, apostrophes, entities, controls."""
    rng = random.Random(seed)
    parts = [
        *"abcxyzABCXYZ0123456789",
        *"!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}~",
        " ", "  ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x00", "\x1b[31m", "\x7f",
        "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "n't",
        "&amp;", "&lt;", "&#39;", "&", "&nbsp;", "&eacute;", "&EACUTE;",
        "dog", "Beach", "SUNSET", "photo", "<start_of_text>", "<END_OF_TEXT>", "<b>",
    ]  # fmt: skip
    return ["".join(rng.choice(parts) for _ in range(rng.randint(0, 40))) for _ in range(count)]


ASCII = [
    *ascii_fuzz(400, seed=7),
    "a red car parked by the sea",
    "Don't STOP me now; it's 9:30pm & we're late!",
    "fish &amp; chips",
    "tab\tand\nnewline",
    "carriage\rreturn",
    "x" * 400,
    "word " * 80,
    "12345678901234567890",
]


def test_plain_ascii_takes_the_ascii_path_and_the_rest_does_not() -> None:
    assert tokenizer_module.is_plain_ascii("a red car, 2 dogs & 'quotes'") is False  # '&'
    assert tokenizer_module.is_plain_ascii("a red car, 2 dogs 'quotes'\tand\nlines") is True
    for odd in ["a\rb", "a\x0bb", "a\x0cb", "a\x00b", "a\x1b[31mb", "a\x7fb", "caf\u00e9"]:
        assert tokenizer_module.is_plain_ascii(odd) is False, odd
    assert sum(map(tokenizer_module.is_plain_ascii, ASCII)) > 50


def test_ascii_path_ids_match_open_clip(reference) -> None:
    plain = [text for text in ASCII if tokenizer_module.is_plain_ascii(text)]
    ours = ClipTokenizer()(plain)
    assert mismatches(ours, reference(plain).numpy(), plain) == []
    wrong = [text for text in ASCII if ClipTokenizer().encode(text) != reference.encode(text)]
    assert wrong == []


def test_ascii_path_pieces_match_the_ftfy_and_regex_path() -> None:
    plain = [text for text in [*ASCII, *PLAIN, *PUNCTUATION] if text.isascii()]
    plain = [text for text in plain if tokenizer_module.is_plain_ascii(text)]
    wrong = [t for t in plain if tokenizer_module.pieces(t) != tokenizer_module.reference_pieces(t)]
    assert wrong == []


def test_an_ascii_query_imports_neither_ftfy_nor_regex_and_other_text_does() -> None:
    code = (
        "import sys; import retrieval.encoders.tokenizer as t; tok = t.load_tokenizer(); "
        "tok(['a red car, parked by the sea: 2 dogs']); "
        "print(sorted(m for m in ('ftfy', 'regex') if m in sys.modules)); "
        "tok(['caf\\u00e9']); print(sorted(m for m in ('ftfy', 'regex') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "['ftfy', 'regex']"]


def test_a_query_unpacks_few_buckets_and_gets_open_clips_ids(reference, fresh_tables) -> None:
    ClipTokenizer()  # builds and stores the tables
    tokenizer_module._tables.cache_clear()
    tokenizer = ClipTokenizer()  # reads them back
    texts = ["a red car parked by the sea", "Don't stop: 42 dogs!", "caf\u00e9 \U0001f436"]
    np.testing.assert_array_equal(tokenizer(texts), reference(texts).numpy())
    tables = tokenizer_module._tables()
    assert 0 < len(tables._unpacked) < len(tables._buckets) // 20
    assert len(tables.ranks) < 48_894 // 4
