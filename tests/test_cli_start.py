"""The command's start-up: plain values converted without pydantic, exactly as typer does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import write_photos

import cli
from retrieval.encoders import load_onnx_encoder
from retrieval.indexer import index_folder
from retrieval.search import Searcher, parse_query

REPO = Path(__file__).resolve().parent.parent

VALUES = [
    "0", "1", "5", "-3", "007", "+5", " 5", "5 ", "1_000", "1000000", "1000001", "-0",
    "99999999999999999999", "0.5", "-0.5", "1.", ".5", "1e-3", "1E2", "-1e0", "1e400", "nan",
    "inf", "-inf", "0x10", "abc", "", " ", "\u0663", "1,5", "a dog", "2:beach", "-",
    "/nonexistent/folder", ".", "caf\u00e9", "\udcff", "a\nb", "true", "False", "yes",
]  # fmt: skip


def outcome(param, value: object) -> tuple[str, object]:
    """What a parameter's conversion gives: ('value', (type, value)) or ('error', its message)."""
    try:
        result = param.get_runtime_param().coerce(value, param, None)
    except typer.BadParameter as e:
        return "error", e.message
    return "value", (type(result), result)


def params(command_name: str) -> list[tuple[object, object]]:
    """(fitted parameter, the same parameter as typer alone builds it) for each parameter."""
    fitted = cli.app.only(command_name).commands[command_name]
    plain = typer.main.get_command(cli.app).commands[command_name]
    pairs = list(zip(fitted.params, plain.params, strict=True))
    assert all(a.name == b.name for a, b in pairs)
    return pairs


@pytest.mark.parametrize("command_name", ["search", "index", "serve", "describe"])
def test_plain_values_convert_as_typers_own_conversion(command_name: str) -> None:
    fitted_kinds = set()
    for fitted, plain in params(command_name):
        if not isinstance(fitted._runtime_param, cli._Conversion):
            continue
        fitted_kinds.add(fitted._runtime_param.kind)
        multiple = fitted.multiple or fitted.nargs == -1
        candidates = [[v] for v in VALUES] + [[], ["a", "b"]] if multiple else VALUES
        candidates = [*candidates, None, 10, 0.25, True, Path("x")]
        for value in candidates:
            assert outcome(fitted, value) == outcome(plain, value), (fitted.name, value)
            fitted._runtime_param = cli._Conversion(fitted)  # a fallback hands over to typer
    if command_name == "search":
        assert fitted_kinds == {"str", "strs", "int", "float", "path", "bool"}


def run(*code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "\n".join(code)], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


WITH_MODULES = (
    "import atexit, sys",
    "atexit.register(lambda: print(sorted(m for m in ('pydantic', 'numpy', 'index') "
    "if m in sys.modules), file=sys.stderr))",
)


def test_a_search_starts_without_pydantic_and_numpy_waits_for_the_collection(tmp_path) -> None:
    args = ["retrieval", "search", "a dog", "-k", "3", "--min-score", "0.2", "--paths",
            "--index", str(tmp_path / "none")]  # fmt: skip
    done = run(*WITH_MODULES, f"sys.argv = {args!r}", "import cli", "cli.app()")
    assert done.returncode == 1
    assert "is not a collection" in done.stderr
    assert "pydantic" not in done.stderr.splitlines()[-1]


def test_date_options_import_nothing_until_given() -> None:
    code = (
        "import cli, sys",
        "group = cli.app.only('search')",
        "ctx = group.commands['search'].make_context('search', ['a dog'])",
        "print(ctx.params['taken_after'], sorted(m for m in ('numpy', 'index') "
        "if m in sys.modules))",
    )
    done = run(*code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "[]"]


@pytest.mark.parametrize(
    "args",
    [
        ["-k", "0"], ["-k", "abc"], ["-k", "1000001"], ["--min-score", "2"],
        ["--min-score", "nan"], ["--taken-after", "2023-13"], ["--bogus"], ["--device", "tpu"],
    ],
)  # fmt: skip
def test_bad_usage_is_typers_own_message_and_exit_2(args: list[str], tmp_path) -> None:
    argv = ["retrieval", "search", "a dog", "--index", str(tmp_path), *args]
    ours = run("import sys", f"sys.argv = {argv!r}", "import cli", "cli.app()")
    theirs = run(
        "import sys, typer", f"sys.argv = {argv!r}", "import cli",
        "typer.main.get_command(cli.app)(prog_name='retrieval')",
    )  # fmt: skip
    assert ours.returncode == theirs.returncode == 2
    assert ours.stderr == theirs.stderr
    assert "Invalid value" in ours.stderr or "No such option" in ours.stderr


def test_help_is_typers_own(tmp_path) -> None:
    argv = ["retrieval", "search", "--help"]
    ours = run("import sys", f"sys.argv = {argv!r}", "import cli", "cli.app()")
    theirs = run(
        "import sys, typer", f"sys.argv = {argv!r}", "import cli",
        "typer.main.get_command(cli.app)(prog_name='retrieval')",
    )  # fmt: skip
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout
    assert "--taken-after" in ours.stdout


def test_a_cold_text_search_loads_only_what_it_needs_and_ranks_like_torch(
    tmp_path, monkeypatch, encoder, tiny_model
) -> None:
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "photos"
    write_photos(root, [f"p{i}.jpg" for i in range(10)])
    index_folder(root, model=tiny_model, encoder=encoder)
    load_onnx_encoder(tiny_model, precision="fp32", weights_hash=encoder.weights_hash)
    with Searcher.open(root / ".retrieval", encoder=encoder) as searcher:
        expected = [h.path.name for h in searcher.search(parse_query(["a dog on a beach"]), k=4)]
    unneeded = ("pydantic", "PIL", "ftfy", "regex", "rich", "torch", "open_clip", "faiss")
    argv = ["retrieval", "search", "a dog on a beach", "-k", "4", "--paths", "--backend", "onnx",
            "--index", str(root / ".retrieval")]  # fmt: skip
    done = run(
        "import atexit, sys",
        f"atexit.register(lambda: print(sorted(m for m in {unneeded!r} if m in sys.modules), "
        "file=sys.stderr))",
        f"sys.argv = {argv!r}", "import cli", "cli.app()",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [Path(line).name for line in done.stdout.splitlines()] == expected
    assert done.stderr.strip() == "[]"
