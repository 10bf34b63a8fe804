"""The `retrieval` command: a thin typer layer over the library.

Each command parses its arguments, calls one library function, and renders the result:
results on stdout (one JSON object per line with --json), progress and messages on stderr.
Expected failures become one line on stderr and exit code 1; bad usage exits 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress


class _Stderr:
    """The rich console on stderr, made on first use: a command that prints only its results
    (a search) never imports rich."""

    _console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            # User text (file names, queries, messages) is printed as it is: no [markup], no
            # :emoji: codes.
            self._console = Console(
                stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False
            )
        return getattr(self._console, name)


class _App(typer.Typer):
    """The typer app, run with only the invoked command built: typer turns each parameter of
    every command into a click parameter before it parses anything."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = sys.argv[1] if len(sys.argv) > 1 else None
        chosen = [c for c in self.registered_commands if c.name == name]
        if args or kwargs or not chosen:
            return super().__call__(*args, **kwargs)
        return self.only(name)()

    def only(self, name: str) -> Any:
        """The click group holding only the command `name`, its plain values converted here."""
        only = typer.Typer(**self._settings)
        only.registered_commands = [c for c in self.registered_commands if c.name == name]
        only.callback(help=self.info.help)(_no_options)
        group = typer.main.get_command(only)
        for command in [group, *getattr(group, "commands", {}).values()]:
            _Conversion.fit(command)
        return group

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._settings = settings


def _no_options() -> None:
    """A group callback without options, so that the one command keeps its name."""


_UNSURE = object()
_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"-?(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})(?:[eE][+-]?[0-9]{1,3})?")
_PLAIN_FLAGS = dict(exists=False, file_okay=True, dir_okay=True, writable=False,
                         readable=True, resolve_path=False, allow_dash=False, path_type=None,
                         parser=None, clamp=False)  # fmt: skip


class _Conversion:
    """Typer 0.29's conversion of a parameter's value, done in Python for the plain cases.

    Typer converts every value (the defaults too) through a pydantic TypeAdapter, and importing
    pydantic costs a cold search about a tenth of a second. A str, a list of str, a plain int or
    decimal within its bounds, a bool, and a Path without checks are converted here as typer would
    convert them; any other value (a bad one, whose message must be typer's) goes to typer's own
    conversion. Fitted only where typer exposes what it converts by (a later typer without them
    just converts as usual).
    """

    KINDS: ClassVar[dict[Any, str]] = {str: "str", int: "int", float: "float", Path: "path",
                                       list[str]: "strs", bool: "bool"}  # fmt: skip

    KIND_TYPES: ClassVar[dict[str, type]] = {"str": str, "bool": bool}

    def __init__(self, param: Any) -> None:
        self.info = param.type_descriptor.parameter_info
        self.kind = self.KINDS[param.type_descriptor.annotation]
        self.multiple = param.multiple or param.nargs == -1

    @classmethod
    def fits(cls, param: Any) -> bool:
        descriptor = getattr(param, "type_descriptor", None)
        info = getattr(descriptor, "parameter_info", None)
        return (
            hasattr(param, "_runtime_param")
            and getattr(descriptor, "file_annotation", True) is None
            and any(descriptor.annotation == known for known in cls.KINDS)  # type: ignore[union-attr]
            and all(getattr(info, flag, not v) == v for flag, v in _PLAIN_FLAGS.items())
        )

    @classmethod
    def fit(cls, command: Any) -> None:
        """Convert the command's parameters here, its --help option too (made on first use)."""
        for param in command.params:
            if cls.fits(param):
                param._runtime_param = cls(param)
        help_option = command.get_help_option

        def fitted_help_option(ctx: Any) -> Any:
            option = help_option(ctx)
            if cls.fits(option) and option._runtime_param is None:
                option._runtime_param = cls(option)
            return option

        command.get_help_option = fitted_help_option

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:
            return () if self.multiple else None
        converted = _UNSURE if self.multiple and isinstance(value, str) else self.convert(value)
        if converted is _UNSURE:
            param._runtime_param = None  # typer's own conversion, from now on
            return param.get_runtime_param().coerce(value, param=param, ctx=ctx)
        return converted

    def convert(self, value: Any) -> Any:
        """value as typer converts it, or _UNSURE."""
        if self.kind in ("str", "bool"):
            return value if type(value) is self.KIND_TYPES[self.kind] else _UNSURE
        if self.kind == "strs":
            plain = isinstance(value, list | tuple) and all(type(v) is str for v in value)
            return list(value) if plain else _UNSURE
        if self.kind == "path":
            if type(value) is not str or not value or "\0" in value:
                return _UNSURE
            with contextlib.suppress(OSError):
                os.stat(value)
                if not os.access(value, os.R_OK):
                    return _UNSURE  # typer says it is not readable
            return Path(value)
        number = self.number(value)
        if number is _UNSURE:
            return _UNSURE
        low, high = self.info.min, self.info.max
        return (
            number
            if (low is None or number >= low) and (high is None or number <= high)
            else _UNSURE
        )

    def number(self, value: Any) -> Any:
        kind = int if self.kind == "int" else float
        if type(value) is kind:
            return value
        pattern = _INT if kind is int else _FLOAT
        if type(value) is str and pattern.fullmatch(value):
            number = kind(value)
            return number if kind is int or abs(number) < 1e300 else _UNSURE
        return _UNSURE


app = _App(
    help="Search your photos by a sentence or by an example photo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err: Any = _Stderr()
MAX_RESULTS = 1_000_000
"""The most results -k may ask for (each costs memory before the collection's size is known)."""
SPLITS = ("test", "val", "train")


def _check_device(value: str) -> str:
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise typer.BadParameter(f"unknown device {value!r}; use auto, cpu or cuda")


def _check_split(value: str) -> str:
    if value not in SPLITS:
        raise typer.BadParameter(f"unknown split {value!r}; use {', '.join(SPLITS)}")
    return value


INDEX_HELP = "Collection directory (default: the nearest .retrieval/ at or above this folder)."
IndexOption = typer.Option(None, "--index", envvar="RETRIEVAL_INDEX", help=INDEX_HELP)
JsonOption = typer.Option(False, "--json", help="Print JSON objects, one per line.")
DeviceOption = typer.Option(
    "auto", "--device", help="auto, cpu or cuda (cuda:N for one GPU).", callback=_check_device
)
PrecisionOption = typer.Option(
    "auto",
    "--precision",
    help="torch: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16; onnx: auto (fp32), fp32, int8.",
)
BackendOption = typer.Option(
    "auto",
    "--backend",
    help="auto (onnx on a CPU, torch on CUDA), torch, or onnx (exported and cached on first use).",
)
ClusterOption = typer.Option(
    "none",
    "--cluster",
    help="Where to encode: none (this process), local[:N] (a private Ray cluster of N CPU "
    "slots), auto (the Ray cluster this runs in) or ray://HOST:PORT. ROOT and the collection "
    "must be on storage every worker can read.",
)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's expected errors into one line and exit code 1."""
    from index.errors import CollectionError
    from retrieval.errors import RetrievalError

    try:
        yield
    except (RetrievalError, CollectionError) as e:
        err.print(f"error: {_escaped(str(e))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted; what was committed is kept, run the command again to go on")
        raise typer.Exit(130) from None


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _shown(path: object) -> str:
    """A path as printed: names that are not UTF-8, and control characters, escaped."""
    from retrieval.names import printable

    return printable(str(path))


def _escaped(message: str) -> str:
    """A message with the bytes of a name that is not UTF-8 as \\xNN (the rest as it is)."""
    return message.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _model(model: str | None, pretrained: str | None) -> Any:
    from retrieval.encoders.identity import model_identity

    return None if model is None else model_identity(model, pretrained)


@app.command("index")
def index_command(
    root: Path = typer.Argument(..., help="Folder of photos to index, recursively."),
    index: Path | None = typer.Option(
        None, "--index", help="Collection directory (default: ROOT/.retrieval)."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="open_clip model: a name, hf-hub:org/name or local-dir:/path "
        "(default: the collection's model, or ViT-B-32 for a new one).",
    ),
    pretrained: str | None = typer.Option(
        None,
        "--pretrained",
        help="Pretrained tag for a model name (laion2b_s34b_b79k for ViT-B-32).",
    ),
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    backend: str = BackendOption,
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Images per model call (default: 16 on a CPU, 256 on CUDA).",
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Decoding threads (default: one per core)."
    ),
    embeddings: str | None = typer.Option(
        None,
        "--embeddings",
        help="How a new collection stores embeddings: float16 (default) or float32.",
    ),
    decode: str = typer.Option(
        "auto",
        "--decode",
        help="Where JPEGs are decoded: cpu (threads), gpu (nvJPEG on the CUDA device), or auto "
        "(cpu for now).",
    ),
    exclude: list[str] = typer.Option(
        [], "--exclude", help="Glob of paths or names to skip; repeat for several."
    ),
    cluster: str = ClusterOption,
    shard_size: int | None = typer.Option(
        None,
        "--shard-size",
        min=1,
        help="With --cluster: files per task (default: 4 tasks per CPU slot, at most 10,000 "
        "files each).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Index a folder of photos: only new and changed files are encoded."""
    from retrieval.indexer import index_folder
    from retrieval.reports import IndexProgress

    if cluster != "none":
        from retrieval.cluster import index_on_cluster

        index_folder = functools.partial(index_on_cluster, cluster=cluster, shard_size=shard_size)

    with user_errors(), _progress_bar() as bar:
        task = bar.add_task("reading", total=None)

        def on_progress(event: IndexProgress) -> None:
            if event.phase == "skip" and event.skipped is not None:
                bar.console.print(f"skipped {_shown(event.skipped.path)}: {event.skipped.error}")
            elif event.phase == "scan":
                bar.update(task, description=f"found {event.total} images", total=None)
            elif event.phase == "encode":
                bar.update(task, description="indexing", completed=event.done, total=event.total)
            elif event.phase == "dates":
                bar.update(task, description="reading dates", completed=event.done,
                           total=event.total)  # fmt: skip
            elif event.phase == "shard":
                bar.update(task, description=f"indexing, {event.done}/{event.total} shards done")

        report = index_folder(
            root,
            collection_dir=index,
            model=_model(model, pretrained),
            device=device,
            precision=precision,
            batch_size=batch_size,
            workers=workers,
            exclude=exclude,
            progress=on_progress,
            backend=backend,
            decode=decode,
            embedding_dtype=embeddings,
        )
    summary = {
        "root": _shown(report.root),
        "collection": _shown(report.collection),
        "added": report.added,
        "updated": report.updated,
        "renamed": report.renamed,
        "removed": report.removed,
        "unchanged": report.unchanged,
        "skipped": [{"path": _shown(s.path), "error": s.error} for s in report.skipped],
        "encoded": report.encoded,
        "dated": report.dated,
        "compacted": report.compacted,
        "images_per_second": round(report.images_per_second, 2),
        "seconds": round(report.seconds, 3),
    }
    if as_json:
        emit_json(summary)
        return
    new_skips = sum(s.new for s in report.skipped)
    skipped = f"{len(report.skipped)} skipped" + (
        f" ({new_skips} new)" if new_skips != len(report.skipped) else ""
    )
    print(
        f"{_shown(report.root)}: {report.added} added, {report.updated} updated, "
        f"{report.renamed} renamed, {report.removed} removed, {report.unchanged} unchanged, "
        f"{skipped}"
    )
    if report.encoded:
        print(
            f"encoded {report.encoded} images at {report.images_per_second:.1f} images/s; "
            f"{report.seconds:.1f} s in all"
        )
    if report.compacted:
        print(f"compacted the embeddings: {report.compacted} unused rows dropped")
    if report.dated:
        print(f"read the capture time of {report.dated} images from their headers")


def _date_option(flag: str, help_start: str) -> Any:
    """A date filter's option: its value is checked (a usage error naming it) before anything
    is opened."""

    def check(value: str | None) -> str | None:
        if value is not None:  # imported only then: retrieval.dates brings numpy and the catalog
            from retrieval.dates import period
            from retrieval.errors import QueryError

            try:
                period(value, option="")
            except QueryError as e:
                raise typer.BadParameter(str(e)) from None
        return value

    return typer.Option(
        None, flag, callback=check, metavar="DATE",
        help=f"{help_start} DATE: a year (2023), a month (2023-07), a day (2023-07-14), or a "
        "date and time (2023-07-14T18:30[+02:00]) as an instant; local time unless an offset "
        "is given. Capture time: EXIF DateTimeOriginal, else the file's modification time.",
    )  # fmt: skip


@app.command("search")
def search_command(
    texts: list[str] | None = typer.Argument(
        None, help="Texts to search for; WEIGHT:TEXT weighs one (2:beach)."
    ),
    image: list[str] = typer.Option(
        [], "--image", "-i", help="An example image to search by; repeat for several."
    ),
    negative: list[str] = typer.Option(
        [], "--not", help="A text or image file to steer away from; repeat for several."
    ),
    k: int = typer.Option(10, "-k", "--k", min=1, max=MAX_RESULTS, help="How many results."),
    under: str | None = typer.Option(
        None, "--under", help="Only results in this folder (inside the indexed root)."
    ),
    min_score: float | None = typer.Option(
        None,
        "--min-score",
        min=-1.0,
        max=1.0,
        help="Only results scoring at least this (cosine, -1..1).",
    ),
    taken_after: str | None = _date_option("--taken-after", "Only photos taken from the start of"),
    taken_before: str | None = _date_option("--taken-before", "Only photos taken up to the end of"),
    index: Path | None = IndexOption,
    model: str | None = typer.Option(
        None, "--model", help="Check that the collection was built with this model."
    ),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Tag for --model."),
    device: str = DeviceOption,
    backend: str = BackendOption,
    precision: str = PrecisionOption,
    paths: bool = typer.Option(
        False,
        "--paths",
        help="Print only paths, one per line (a name with a newline or bytes that are not UTF-8 "
        "is shown escaped; use -0 for exact names).",
    ),
    null: bool = typer.Option(
        False,
        "-0",
        "--null",
        help="Print only paths, each ended by a NUL byte and exactly as on disk (for xargs -0).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Search a collection by text, by example images, or both."""
    from retrieval.search import Searcher, parse_query

    with user_errors():
        terms = parse_query(texts or [], image, negative)
        with Searcher.open(
            index, model=_model(model, pretrained), device=device, backend=backend,
            precision=precision,
        ) as searcher:  # fmt: skip
            hits = searcher.search(terms, k=k, under=under, min_score=min_score,
                                   taken_after=taken_after, taken_before=taken_before)  # fmt: skip
    if null and not as_json:
        sys.stdout.buffer.write(b"".join(os.fsencode(hit.path) + b"\0" for hit in hits))
        return
    escaped = 0
    for hit in hits:
        shown = _shown(hit.path)
        escaped += shown != str(hit.path)
        if as_json:
            emit_json({"rank": hit.rank, "score": round(hit.score, 6), "path": shown,
                       "id": hit.id})  # fmt: skip
        elif paths:
            print(shown)
        else:
            print(f"{hit.rank:>3}  {hit.score:.4f}  {shown}")
    if escaped and paths and not as_json:
        err.print(
            f"warning: {escaped} of the paths are shown escaped (\\xNN, \\n); "
            "-0 prints them exactly"
        )
    if not hits and not as_json and not paths:
        err.print("no results")


@app.command("add-texts")
def add_texts_command(
    file: Path = typer.Argument(..., help="Texts, one per line, or a .csv/.tsv file."),
    column: str | None = typer.Option(
        None, "--column", help="The CSV/TSV column to read (default: text, caption or title)."
    ),
    index: Path | None = IndexOption,
    device: str = DeviceOption,
    backend: str = BackendOption,
    as_json: bool = JsonOption,
) -> None:
    """Add texts to a collection, for `retrieval describe` (image-to-text)."""
    from retrieval.texts import add_texts, read_texts

    with user_errors(), _progress_bar() as bar:
        task = bar.add_task("embedding texts", total=None)
        report = add_texts(
            read_texts(file, column),
            collection_dir=index,
            device=device,
            backend=backend,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        emit_json({"added": report.added, "known": report.known, "total": report.total})
    else:
        print(f"{report.added} texts added, {report.known} already in the collection")


@app.command("describe")
def describe_command(
    image: Path = typer.Argument(..., help="The image to describe."),
    k: int = typer.Option(5, "-k", "--k", min=1, max=MAX_RESULTS, help="How many texts."),
    source: str = typer.Option(
        "auto",
        "--source",
        help="texts (the collection's), vocabulary (ImageNet classes), or auto: texts if any.",
    ),
    index: Path | None = IndexOption,
    device: str = DeviceOption,
    backend: str = BackendOption,
    precision: str = PrecisionOption,
    as_json: bool = JsonOption,
) -> None:
    """The texts that best describe an image: the collection's own, or a built-in vocabulary."""
    from retrieval.search import Searcher

    with (
        user_errors(),
        Searcher.open(index, device=device, backend=backend, precision=precision) as searcher,
    ):
        hits = searcher.describe(image, k=k, source=source)
    for hit in hits:
        if as_json:
            emit_json({"rank": hit.rank, "score": round(hit.score, 6), "text": hit.text,
                       "id": hit.id})  # fmt: skip
        else:
            print(f"{hit.rank:>3}  {hit.score:.4f}  {hit.text}")


@app.command("serve")
def serve_command(
    index: Path | None = IndexOption,
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on; anything but loopback is reachable."
    ),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free one)."),
    device: str = DeviceOption,
    backend: str = BackendOption,
    precision: str = PrecisionOption,
    cluster: str = typer.Option(
        "none",
        "--cluster",
        help="Where the image index is held: none (this process), local[:N], auto or "
        "ray://HOST:PORT (Ray Serve; the collection must be on storage every node can read).",
    ),
    shards: int | None = typer.Option(
        None, "--shards", help="With --cluster: parts the image index is split into (default 1)."
    ),
    replicas: int | None = typer.Option(
        None, "--replicas", help="With --cluster: replicas of each part (default 1)."
    ),
) -> None:
    """Open a web page to search the collection by text or by dropping a photo."""
    from retrieval.web import Listening, serve

    if cluster != "none" or shards is not None or replicas is not None:
        from retrieval.cluster.serving import serve_on_cluster

        serve = functools.partial(
            serve_on_cluster, cluster=cluster, shards=shards, replicas=replicas
        )

    def announce(listening: Listening) -> None:
        if not listening.loopback:
            err.print(
                f"warning: listening on {host}, so other machines can search this collection "
                "and see its photos; use --host 127.0.0.1 to keep it to this machine"
            )
        print(listening.url, flush=True)
        err.print("Open that address in a browser; Ctrl-C stops the server.")

    with user_errors():
        serve(
            index,
            host=host,
            port=port,
            on_listening=announce,
            device=device,
            backend=backend,
            precision=precision,
        )


@app.command("bench")
def bench_command(
    dataset: str = typer.Argument(
        ...,
        help="synthetic[:N], a Karpathy-split JSON (dataset_flickr30k.json), a COCO caption "
        "file (captions_val2017.json), or an image,caption CSV/TSV.",
    ),
    model: str | None = typer.Option(None, "--model", help="open_clip model (default ViT-B-32)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Tag for --model."),
    split: str = typer.Option("test", "--split", help="test, val or train.", callback=_check_split),
    ks: list[str] = typer.Option(
        ["1,5,10"], "--k", help="Recall cut-offs: --k 1,5,10 or --k 1 --k 5 (default 1,5,10)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    images_dir: Path | None = typer.Option(
        None,
        "--images-dir",
        help="Images folder of a JSON dataset (default: images/ beside a Karpathy JSON; "
        "val2017/ beside a COCO captions_val2017.json or its annotations/ folder).",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Keep the collection, recall.json, recall.png and the embeddings here."
    ),
    device: str = DeviceOption,
    backend: str = BackendOption,
    precision: str = PrecisionOption,
    as_json: bool = JsonOption,
) -> None:
    """Recall@k of a model on a captioned dataset, exactly and through the FAISS index."""
    from retrieval.encoders.identity import DEFAULT_MODEL
    from retrieval.eval.bench import run_benchmark
    from retrieval.eval.datasets import load_dataset

    with user_errors():
        _output_folder(out)
        cutoffs = _parse_ks(ks)
        data = load_dataset(dataset, split=split, images_dir=images_dir)
        report = run_benchmark(
            data,
            model=_model(model, pretrained) or DEFAULT_MODEL,
            device=device,
            batch_size=batch_size,
            ks=cutoffs,
            out=out,
            backend=backend,
            precision=precision,
        )
    if as_json:
        emit_json(report.to_json())
        return
    print(
        f"{report.dataset}: {report.images} images, {report.texts} captions, model {report.model}"
    )
    if report.uncaptioned_images:
        print(f"({report.uncaptioned_images} images without a caption left out)")
    print(f"{'':>22}" + "".join(f"{'R@' + str(k):>8}" for k in report.ks))
    rows = [
        ("text->image", report.text_to_image),
        ("image->text", report.image_to_text),
        (f"text->image ({report.factory})", report.index_text_to_image),
        (f"image->text ({report.factory})", report.index_image_to_text),
    ]
    for label, recalls in rows:
        print(f"{label:>22}" + "".join(f"{100 * recalls[k]:>8.2f}" for k in report.ks))
    print(
        f"encoding {report.images_per_second:.1f} images/s, {report.texts_per_second:.1f} texts/s; "
        f"search {report.search_ms_per_query:.3f} ms per query; {report.seconds:.1f} s in all"
    )
    if out:
        print(f"wrote {out}/recall.json, recall.png and the embeddings")


def _output_folder(out: Path | None) -> None:
    """Refuse an --out that names a file (or anything but a folder) before any work is done."""
    from retrieval.errors import RetrievalError

    if out is not None and out.exists() and not out.is_dir():
        raise RetrievalError(f"--out {out} is a file, not a folder; name a new or existing folder")


def _parse_ks(values: list[str]) -> list[int]:
    try:
        ks = [int(v) for value in values for v in value.replace(",", " ").split()]
    except ValueError as e:
        raise typer.BadParameter(f"--k takes whole numbers, like --k 1,5,10 ({e})") from e
    if not ks or min(ks) < 1:
        raise typer.BadParameter("--k takes whole numbers of at least 1, like --k 1,5,10")
    return ks


@app.command("train")
def train_command(
    dataset: str = typer.Argument(..., help="synthetic[:N], a Karpathy-split JSON, or a CSV/TSV."),
    out: Path = typer.Option(..., "--out", help="Where the trained model is saved (local-dir)."),
    model: str = typer.Option(
        "ViT-B-32",
        "--model",
        help="Weights to fine-tune (a name, hf-hub:, local-dir:), or a JSON architecture config "
        "to train from scratch.",
    ),
    pretrained: str | None = typer.Option(
        None, "--pretrained", help="Tag for --model; none trains the architecture from scratch."
    ),
    epochs: int | None = typer.Option(None, "--epochs", min=1),
    steps: int | None = typer.Option(None, "--steps", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=2),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate."),
    warmup: int = typer.Option(100, "--warmup", min=0, help="Warm-up steps."),
    weight_decay: float = typer.Option(0.1, "--weight-decay"),
    lock_image: bool = typer.Option(False, "--lock-image", help="Freeze the image tower (LiT)."),
    lock_text: bool = typer.Option(False, "--lock-text", help="Freeze the text tower."),
    loss: str = typer.Option("clip", "--loss", help="clip (InfoNCE) or siglip (sigmoid)."),
    precision: str = PrecisionOption,
    split: str = typer.Option(
        "train", "--split", help="The split to train on: train, val or test.", callback=_check_split
    ),
    val_split: float = typer.Option(
        0.1, "--val-split", help="Share of the images held out for validation recall."
    ),
    seed: int = typer.Option(0, "--seed"),
    device: str = DeviceOption,
    workers: int | None = typer.Option(None, "--workers", min=1, help="Decoding threads."),
    images_dir: Path | None = typer.Option(None, "--images-dir"),
    checkpoint_every: int = typer.Option(
        0, "--checkpoint-every", min=0, help="Also save the resumable state every N steps."
    ),
    resume: bool = typer.Option(False, "--resume", help="Go on from OUT's last checkpoint."),
) -> None:
    """Train the towers contrastively: from scratch, or fine-tuning open_clip weights."""
    from retrieval.eval.datasets import load_dataset
    from retrieval.training import TrainConfig, train

    with user_errors():
        _output_folder(out)
        if epochs is None and steps is None:
            epochs = 1
        config = TrainConfig(
            out=out, epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
            weight_decay=weight_decay, lock_image=lock_image, lock_text=lock_text, loss=loss,
            precision=precision, val_split=val_split, seed=seed, device=device, workers=workers,
            checkpoint_every=checkpoint_every, resume=resume, **_training_model(model, pretrained),
        )  # fmt: skip
        data = load_dataset(dataset, split=split, images_dir=images_dir)
        report = train(data, config, _training_progress())
    best = report.best_recall.get("text_to_image", {})
    print(
        f"trained {report.steps} steps in {report.seconds:.0f} s; best epoch {report.best_epoch}"
        + (f", validation text->image R@1/5/10 {_percent(best)}" if best else "")
    )
    print(f"saved to {out} (use it with --model local-dir:{out})")


def _training_model(model: str, pretrained: str | None) -> dict[str, Any]:
    from retrieval.encoders.identity import model_identity
    from retrieval.errors import RetrievalError

    if model.endswith(".json"):
        path = Path(model).expanduser()
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RetrievalError(f"{path}: not a readable JSON architecture config ({e})") from e
        return {"model_cfg": config.get("model_cfg", config)}
    return {"model": model_identity(model, pretrained)}


def _training_progress() -> Any:
    def show(event: Any) -> None:
        if event.phase == "step" and (event.step % 10 == 0 or event.step == event.total_steps):
            err.print(
                f"step {event.step}/{event.total_steps}  loss {event.loss:.4f}  "
                f"temperature {event.temperature:.4f}  {event.images_per_second:.0f} images/s",
                markup=False,
            )
        elif event.phase == "eval" and event.recall:
            when = "before training" if event.epoch == 0 else f"after epoch {event.epoch}"
            err.print(
                f"validation recall {when}: text->image "
                f"{_percent(event.recall['text_to_image'])}, image->text "
                f"{_percent(event.recall['image_to_text'])} (R@1/5/10)",
                markup=False,
            )

    return show


def _percent(recalls: dict[int, float]) -> str:
    return "/".join(f"{100 * v:.1f}" for _, v in sorted(recalls.items()))


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo"), "--out", help="Where the demo leaves its work."),
    epochs: int = typer.Option(10, "--epochs", min=1),
) -> None:
    """Offline demonstration: train a small model, index, search, describe, benchmark."""
    from retrieval.demo import run_demo

    with user_errors():
        _output_folder(out)
        report = run_demo(out, epochs=epochs, progress=_training_progress(),
                          say=lambda line: err.print(line, markup=False))  # fmt: skip
    for query, picture, hits in report.searches:
        print(f'\nretrieval search "{query}"   (written for {picture.name})')
        for hit in hits:
            mark = "  <- the picture it describes" if hit.path == picture else ""
            print(f"{hit.rank:>3}  {hit.score:.4f}  {hit.path}{mark}")
    for picture, texts in report.descriptions:
        print(f"\nretrieval describe {picture}")
        for text in texts:
            print(f"{text.rank:>3}  {text.score:.4f}  {text.text}")
    if report.recall:
        recall = report.recall
        print(f"\nrecall@k on {recall.images} held-out pictures, {recall.texts} captions:")
        print(f"  text->image R@1/5/10: {_percent(recall.text_to_image)}")
        print(f"  image->text R@1/5/10: {_percent(recall.image_to_text)}")
    print(
        f"\nthe model is in {report.out / 'model'}, the collection in {report.out / 'collection'}; "
        f'go on with:\n  retrieval search "a big red star" --index {report.out / "collection"}'
        f"\n  retrieval serve --index {report.out / 'collection'}    # a search page in a browser"
    )


@app.command("export")
def export_command(
    model: str | None = typer.Option(
        None, "--model", help="The model to export (default: the collection's, or ViT-B-32)."
    ),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Tag for --model."),
    precision: list[str] = typer.Option(
        ["fp32"], "--precision", help="fp32 and/or int8 (repeat for both)."
    ),
    index: Path | None = typer.Option(
        None, "--index", envvar="RETRIEVAL_INDEX", help="Export the model of this collection."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Export a model's towers to ONNX (checked against PyTorch) for --backend onnx."""
    from retrieval.encoders import export_model

    with user_errors():
        results = [export_model(_model(model, pretrained), p, index) for p in precision]
    for result in results:
        if as_json:
            emit_json(result.to_json())
        else:
            cosines = ", ".join(f"{k} {v:.6f}" for k, v in result.min_cosine_to_torch.items())
            print(f"{result.model} {result.precision}: {result.folder} "
                  f"(cosine to PyTorch: {cosines})")  # fmt: skip


@app.command("reindex")
def reindex_command(
    factory: str | None = typer.Option(
        None, "--factory", help='A FAISS factory string: "Flat", "IVF1024,Flat", "HNSW32"...'
    ),
    auto: bool = typer.Option(
        False, "--auto", help="Choose from the size and memory budget (the default)."
    ),
    memory: str | None = typer.Option(
        None, "--memory", help="Memory budget for the index: bytes, or 512M, 4G..."
    ),
    target_recall: float | None = typer.Option(
        None, "--target-recall", help="Recall@10 against exact search to tune for (0.95)."
    ),
    index: Path | None = IndexOption,
    cluster: str = typer.Option(
        "none",
        "--cluster",
        help="Where to fill an IVF index: none (this process), local[:N], auto or "
        "ray://HOST:PORT. The collection must be on storage every worker can read.",
    ),
    shard_size: int = typer.Option(
        100_000, "--shard-size", help="With --cluster: stored vectors per task."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Rebuild the image index from the stored embeddings (nothing is encoded again)."""
    from retrieval.errors import RetrievalError
    from retrieval.upkeep import reindex

    if cluster != "none":
        from retrieval.cluster.reindexing import reindex_on_cluster

        def reindex(*args: Any, **options: Any) -> Any:
            def progress(event: Any) -> None:
                if event.phase == "note":
                    err.print(f"note: {event.message}", markup=False)

            return reindex_on_cluster(*args, cluster=cluster, shard_size=shard_size,
                                      progress=progress, **options)  # fmt: skip

    with user_errors():
        if auto and factory:
            raise RetrievalError("give --factory or --auto, not both")
        tuning = reindex(index, factory=factory, memory_budget=_bytes(memory),
                         target_recall=target_recall)  # fmt: skip
        info = _info_dict(index)
    if tuning.warning:
        err.print(f"warning: {tuning.warning}", markup=False)
    if as_json:
        emit_json(info)
        return
    depth = f", {tuning.parameter} {tuning.value}" if tuning.parameter else ""
    print(
        f"built {info['factory']}{depth}: recall@{tuning.k} {tuning.recall:.3f} against exact "
        f"search, {tuning.ms_per_query:.2f} ms per query, {_human_bytes(info['index_bytes'])}"
    )


def _bytes(text: str | None) -> int | None:
    if text is None:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError as e:
        raise typer.BadParameter(f"--memory {text}: give bytes, or a size like 512M or 4G") from e


@app.command("duplicates")
def duplicates_command(
    threshold: float | None = typer.Option(
        None, "--threshold", help="Cosine at which two files are the same picture (0.96)."
    ),
    under: str | None = typer.Option(None, "--under", help="Only files in this folder."),
    paths: bool = typer.Option(
        False, "--paths", help="Print only the files that are not their group's best, one a line."
    ),
    index: Path | None = IndexOption,
    as_json: bool = JsonOption,
) -> None:
    """Groups of files that show the same picture, best first; nothing is deleted."""
    from retrieval.duplicates import DEFAULT_THRESHOLD, find_duplicates

    with user_errors(), _progress_bar() as bar:
        task = bar.add_task("comparing", total=None)
        groups = find_duplicates(
            index,
            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
            under=under,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    for group in groups:
        if as_json:
            files = [{"path": str(f.path), "size": f.size, "width": f.width, "height": f.height,
                      "best": f.best} for f in group.files]  # fmt: skip
            emit_json({"group": group.number, "score": round(group.score, 6), "files": files})
        elif paths:
            for file in group.files[1:]:
                print(file.path)
        else:
            count = len(group.files)
            print(f"group {group.number}: {count} files, lowest cosine {group.score:.4f}")
            for file in group.files:
                pixels = f"{file.width}x{file.height}" if file.width else "?"
                mark = "best" if file.best else ""
                print(f"  {mark:<4}  {pixels:>11}  {_human_bytes(file.size):>10}  {file.path}")
    if not as_json and not paths:
        extra = sum(len(g.files) - 1 for g in groups)
        err.print(f"{len(groups)} groups; {extra} files are copies of a group's best")


@app.command("check")
def check_command(
    repair: bool = typer.Option(
        False, "--repair", help="Mend what can be mended without losing anything."
    ),
    index: Path | None = IndexOption,
    as_json: bool = JsonOption,
) -> None:
    """Verify a collection: catalog, manifest, embeddings, FAISS indexes, thumbnails."""
    from retrieval.upkeep import check_collection

    with user_errors():
        report = check_collection(index, repair=repair)
    for problem in report.problems:
        if as_json:
            emit_json({"part": problem.part, "problem": problem.message,
                       "repairable": problem.repairable})  # fmt: skip
        else:
            print(f"{problem.part}: {problem.message}")
    for done in report.repaired:
        if as_json:
            emit_json({"repaired": done})
        else:
            print(f"repaired: {done}")
    if not report.problems and not as_json:
        print("ok")
    if not report.ok:
        if not repair and any(p.repairable for p in report.problems):
            err.print("run `retrieval check --repair` to mend what can be mended")
        raise typer.Exit(1)


@app.command("compact")
def compact_command(index: Path | None = IndexOption, as_json: bool = JsonOption) -> None:
    """Reclaim the space of embeddings that no item uses any more."""
    from retrieval.upkeep import compact_collection

    with user_errors():
        done = compact_collection(index)
    if as_json:
        emit_json({"rows": done.rows, "bytes": done.bytes})
    else:
        print(f"dropped {done.rows} unused embeddings, {_human_bytes(done.bytes)} freed")


@app.command("info")
def info_command(index: Path | None = IndexOption, as_json: bool = JsonOption) -> None:
    """Show a collection's model, index, counts, skipped files and size on disk."""
    with user_errors():
        data = _info_dict(index)
    if as_json:
        emit_json(data)
        return
    tuning = data["tuning"]
    depth = ", ".join(f"{k} {v}" for k, v in data["search_params"].items())
    measured = (
        f"; recall@{tuning['k']} {tuning['recall']:.3f} against exact, "
        f"{tuning['ms_per_query']:.2f} ms per query"
        if tuning
        else ""
    )
    print(f"collection  {data['collection']}")
    print(f"root        {data['root']}")
    print(
        f"model       {data['model']}" + (f" ({data['pretrained']})" if data["pretrained"] else "")
    )
    print(
        f"embeddings  {data['dim']}-d {data['embedding_dtype']}, encoded by {data['backend']} "
        f"{data['precision']}"
    )
    print(
        f"index       {data['factory']}" + (" (chosen automatically)" if data["auto_index"] else "")
        + (f", {depth}" if depth else "") + measured
        + f"; {_human_bytes(data['index_bytes'])}, updated {data['index_updates']}"
    )  # fmt: skip
    if tuning.get("warning"):
        err.print(f"warning: {tuning['warning']}", markup=False)
    print(f"images      {data['images']}")
    print(f"texts       {data['texts']}")
    print(f"size        {_human_bytes(data['bytes_on_disk'])}")
    print(f"taken       {_taken_span(data['taken'])}")
    print(f"skipped     {len(data['skipped'])}")
    for skipped in data["skipped"]:
        print(f"  {skipped['path']}: {skipped['error']}")


def _taken_span(taken: dict[str, Any]) -> str:
    if not taken.get("earliest"):
        span = "no capture times"
    else:
        span = f"{taken['earliest']} to {taken['latest']}"
    sources = (f"{taken['exif']} from EXIF, {taken['exif-local']} from EXIF without a time zone "
               f"(read as local time), {taken['mtime']} from file times")  # fmt: skip
    unread = f", {taken['unread']} not read yet (run index)" if taken.get("unread") else ""
    return f"{span} ({sources}{unread})"


def _info_dict(index: Path | None) -> dict[str, Any]:
    from retrieval.info import collection_info

    return collection_info(index).to_dict()


@contextlib.contextmanager
def _progress_bar() -> Iterator[Progress]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with progress:
        yield progress


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


if __name__ == "__main__":
    app()
