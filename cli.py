"""The `retrieval` command: a thin typer layer over the library.

Each command parses its arguments, calls one library function, and renders the result:
results on stdout (one JSON object per line with --json), progress and messages on stderr.
Expected failures become one line on stderr and exit code 1; bad usage exits 2.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

app = typer.Typer(
    help="Search your photos by a sentence or by an example photo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

INDEX_HELP = "Collection directory (default: the nearest .retrieval/ at or above this folder)."
IndexOption = typer.Option(None, "--index", envvar="RETRIEVAL_INDEX", help=INDEX_HELP)
JsonOption = typer.Option(False, "--json", help="Print JSON objects, one per line.")
DeviceOption = typer.Option("auto", "--device", help="auto, cpu or cuda.")
PrecisionOption = typer.Option(
    "auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16."
)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's expected errors into one line and exit code 1."""
    from index.errors import CollectionError
    from retrieval.errors import RetrievalError

    try:
        yield
    except (RetrievalError, CollectionError) as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted; what was committed is kept, run the command again to go on")
        raise typer.Exit(130) from None


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


def _model(model: str | None, pretrained: str | None) -> Any:
    from retrieval.models import model_identity

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
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per model call."),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Decoding threads (default: one per core)."
    ),
    exclude: list[str] = typer.Option(
        [], "--exclude", help="Glob of paths or names to skip; repeat for several."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Index a folder of photos: only new and changed files are encoded."""
    from retrieval.indexer import IndexProgress, index_folder

    with user_errors(), _progress_bar() as bar:
        task = bar.add_task("reading", total=None)

        def on_progress(event: IndexProgress) -> None:
            if event.phase == "skip" and event.skipped is not None:
                bar.console.print(
                    f"skipped {event.skipped.path}: {event.skipped.error}", markup=False
                )
            elif event.phase == "scan":
                bar.update(task, description=f"found {event.total} images", total=None)
            elif event.phase == "encode":
                bar.update(task, description="indexing", completed=event.done, total=event.total)

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
        )
    summary = {
        "root": str(report.root),
        "collection": str(report.collection),
        "added": report.added,
        "updated": report.updated,
        "renamed": report.renamed,
        "removed": report.removed,
        "unchanged": report.unchanged,
        "skipped": [{"path": s.path, "error": s.error} for s in report.skipped],
        "encoded": report.encoded,
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
        f"{report.root}: {report.added} added, {report.updated} updated, "
        f"{report.renamed} renamed, {report.removed} removed, {report.unchanged} unchanged, "
        f"{skipped}"
    )
    if report.encoded:
        print(
            f"encoded {report.encoded} images at {report.images_per_second:.1f} images/s; "
            f"{report.seconds:.1f} s in all"
        )


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
    k: int = typer.Option(10, "-k", "--k", min=1, help="How many results."),
    under: str | None = typer.Option(
        None, "--under", help="Only results in this folder (inside the indexed root)."
    ),
    min_score: float | None = typer.Option(
        None, "--min-score", help="Only results scoring at least this (cosine, -1..1)."
    ),
    index: Path | None = IndexOption,
    model: str | None = typer.Option(
        None, "--model", help="Check that the collection was built with this model."
    ),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Tag for --model."),
    device: str = DeviceOption,
    paths: bool = typer.Option(False, "--paths", help="Print only paths, one per line."),
    as_json: bool = JsonOption,
) -> None:
    """Search a collection by text, by example images, or both."""
    from retrieval.search import Searcher, parse_query

    with user_errors():
        terms = parse_query(texts or [], image, negative)
        with Searcher.open(index, model=_model(model, pretrained), device=device) as searcher:
            hits = searcher.search(terms, k=k, under=under, min_score=min_score)
    for hit in hits:
        if as_json:
            emit_json({"rank": hit.rank, "score": round(hit.score, 6), "path": str(hit.path),
                       "id": hit.id})  # fmt: skip
        elif paths:
            print(hit.path)
        else:
            print(f"{hit.rank:>3}  {hit.score:.4f}  {hit.path}")
    if not hits and not as_json and not paths:
        err.print("no results")


@app.command("info")
def info_command(index: Path | None = IndexOption, as_json: bool = JsonOption) -> None:
    """Show a collection's model, counts, skipped files and size on disk."""
    from retrieval.info import collection_info

    with user_errors():
        info = collection_info(index)
    data = {
        "collection": str(info.directory),
        "root": str(info.root),
        "model": info.model.name,
        "pretrained": info.model.pretrained,
        "dim": info.dim,
        "factory": info.factory,
        "embedding_dtype": info.embedding_dtype,
        "images": info.images,
        "skipped": [{"path": s.path, "error": s.error} for s in info.skipped],
        "bytes_on_disk": info.bytes_on_disk,
    }
    if as_json:
        emit_json(data)
        return
    print(f"collection  {info.directory}")
    print(f"root        {info.root}")
    print(f"model       {info.model}")
    print(f"embeddings  {info.dim}-d {info.embedding_dtype}, FAISS {info.factory}")
    print(f"images      {info.images}")
    print(f"size        {_human_bytes(info.bytes_on_disk)}")
    print(f"skipped     {len(info.skipped)}")
    for skipped in info.skipped:
        print(f"  {skipped.path}: {skipped.error}")


@contextlib.contextmanager
def _progress_bar() -> Iterator[Progress]:
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
