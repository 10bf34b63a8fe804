"""The query layer: text-to-image and image-to-image search over a collection.

A query is a weighted sum of text and image embeddings (negative terms subtract), normalised
and searched through the collection's FAISS index with per-call filters.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from index.catalog import TEXT
from index.collection import Collection, resolve_dir
from index.exact import top_k
from index.manifest import ModelIdentity

from .collection_model import encoder_for
from .dates import When, taken_range
from .encoders.protocol import Encoder
from .errors import ImageReadError, QueryError, UnknownItem
from .folders import under_prefix
from .vocabulary import vocabulary

TermKind = Literal["text", "image"]
_WEIGHT = re.compile(r"^(-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?):(.+)$", re.DOTALL)


@dataclass(frozen=True)
class QueryTerm:
    """One part of a query: a text or an image file, with a weight (negative subtracts)."""

    value: str
    kind: TermKind
    weight: float = 1.0


@dataclass(frozen=True)
class TextHit:
    """A text found for an image. id: the collection's text id (None for a vocabulary label)."""

    rank: int
    score: float
    text: str
    id: int | None = None


@dataclass(frozen=True)
class Hit:
    """One search result. score is the inner product of unit vectors (cosine), in [-1, 1]."""

    rank: int
    id: int
    score: float
    path: Path


def parse_term(raw: str, kind: TermKind | None = None, *, negative: bool = False) -> QueryTerm:
    """Parse 'WEIGHT:TERM' or 'TERM'. kind None means: an existing image file, else text."""
    value, weight = raw, 1.0
    match = _WEIGHT.match(raw)
    if match and not (kind != "text" and os.path.exists(raw)):
        weight, value = float(match.group(1)), match.group(2)
        if not abs(weight) <= 1e6:  # beyond that a weighted sum overflows float32
            raise QueryError(f"weight {match.group(1)} in {raw!r} is too large; use one up to 1e6")
    if kind is None:
        from .images import IMAGE_EXTENSIONS  # Pillow, only for a term that may be a file

        looks_like_image = os.path.splitext(value)[1].lower() in IMAGE_EXTENSIONS
        kind = "image" if looks_like_image and os.path.isfile(value) else "text"
    if not value.strip():
        raise QueryError(f"empty query term {raw!r}")
    return QueryTerm(value, kind, -weight if negative else weight)


def parse_query(
    texts: Sequence[str] = (), images: Sequence[str] = (), negatives: Sequence[str] = ()
) -> list[QueryTerm]:
    """The terms of a CLI query: texts and --image files add, --not terms subtract."""
    terms = [parse_term(t, "text") for t in texts]
    terms += [parse_term(i, "image") for i in images]
    terms += [parse_term(n, None, negative=True) for n in negatives]
    return _with_positive_term(terms)


def parse_text_query(query: str) -> list[QueryTerm]:
    """The terms of a one-line text query, as typed in a search box.

    `+` and `-` at the start or after a space begin a term that adds or subtracts ("beach -
    people", "sunset +2:sea -night"); a hyphen inside a word ("black-and-white") does not.
    Every term is a text: a query from a box never names a file.
    """
    terms = []
    for sign, raw in _OPERATOR.findall(" " + query):
        if raw.strip():
            terms.append(parse_term(raw.strip(), "text", negative=sign == "-"))
        elif sign:
            raise QueryError(f"{sign!r} in {query!r} is followed by no term")
    return _with_positive_term(terms)


_OPERATOR = re.compile(r"(?:^|\s)([+-]?)((?:[^\s]|\s(?![+-]))*)")


def _with_positive_term(terms: list[QueryTerm]) -> list[QueryTerm]:
    if not any(t.weight > 0 for t in terms):
        raise QueryError("nothing to search for: give a text, or an image, with a positive weight")
    return terms


class ImageIndex(Protocol):
    """Where a searcher's image searches go instead of the collection's own index (the parts
    of a sharded index on a cluster: retrieval.cluster.serving)."""

    def search(
        self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray | None, version: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """As Collection.search over the images; version: the catalog's image version."""
        ...


class Searcher:
    """Searches one collection. The model is loaded on the first query and kept.

    image_index: answers the image searches in place of the collection's own index."""

    def __init__(
        self,
        collection: Collection,
        *,
        encoder: Encoder | None = None,
        model: ModelIdentity | None = None,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
        image_index: ImageIndex | None = None,
    ) -> None:
        if model is not None:
            collection.check_model(model)
        self.collection = collection
        collection.search_device = device  # FAISS on the GPU too when the model is there
        self._encoder = encoder
        self._device = device
        self._precision = precision
        self._backend = backend
        self.image_index = image_index

    @classmethod
    def open(cls, collection_dir: Path | None = None, **kwargs: object) -> Searcher:
        """Open the collection in collection_dir, or the nearest one above the current folder."""
        return cls(Collection.open(resolve_dir(collection_dir), readonly=True), **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.collection.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def encoder(self) -> Encoder:
        """The collection's model, loaded on first use; the collection is only read."""
        if self._encoder is None:
            self._encoder = encoder_for(
                self.collection,
                device=self._device,
                precision=self._precision,
                backend=self._backend,
            )
        return self._encoder

    def embed(self, terms: Sequence[QueryTerm]) -> np.ndarray:
        """The query vector: float32 (d,), L2-normalised weighted sum of the terms."""
        texts = [t for t in terms if t.kind == "text"]
        images = [t for t in terms if t.kind == "image"]
        parts: list[np.ndarray] = []
        weights: list[float] = []
        if texts:
            parts.append(self.encoder.encode_texts([t.value for t in texts]))
            weights += [t.weight for t in texts]
        if images:
            parts.append(self.encode_image_files([Path(t.value) for t in images]))
            weights += [t.weight for t in images]
        vectors = np.concatenate(parts)
        query = (np.asarray(weights, dtype=np.float32)[:, None] * vectors).sum(axis=0)
        norm = float(np.linalg.norm(query))
        if norm < 1e-6:
            raise QueryError("the query's terms cancel out; change their weights")
        return (query / norm).astype(np.float32)

    def encode_image_files(self, paths: Sequence[Path]) -> np.ndarray:
        """Embed image files given as queries, in one model call: float32 (n, d)."""
        for path in paths:
            if not path.is_file():
                raise QueryError(f"{path}: no such image file")
        return self.encoder.encode_images(np.stack([self._prepared(path) for path in paths]))

    def encode_image(self, source: Path | bytes, *, name: str | None = None) -> np.ndarray:
        """Embed one image (a file, or an upload's bytes named `name`): float32 (1, d)."""
        return self.encoder.encode_images(self._prepared(source, name)[None])

    def prepare_image(self, source: Path | bytes, *, name: str | None = None) -> np.ndarray:
        """Model input for one image, decoded and resized but not encoded: uint8 (H, W, 3)."""
        return self._prepared(source, name)

    def _prepared(self, source: Path | bytes, name: str | None = None) -> np.ndarray:
        """Model input, decoded as indexing decodes, with the same decompression-bomb cap."""
        from .images import load_image  # Pillow: a text query never imports it

        try:
            image = load_image(source, min_size=self.encoder.min_side, name=name)
        except ImageReadError as e:
            raise QueryError(str(e)) from e
        return self.encoder.prepare(image)

    def item_vector(self, item_id: int) -> np.ndarray:
        """The stored embedding of an indexed image: float32 (d,)."""
        item = self.collection.catalog.get(item_id)
        if item is None or item.row is None:
            raise UnknownItem(f"no indexed image has id {item_id}")
        vector = self.collection.store.read([item.row])[0]
        if not np.isfinite(vector).all():
            raise QueryError(
                f"the stored embedding of image {item_id} is damaged; run `retrieval check "
                "--repair`, then `retrieval index`"
            )
        return vector

    def similar(
        self,
        item_id: int,
        *,
        k: int = 10,
        prefix: str | None = None,
        taken_after: When | None = None,
        taken_before: When | None = None,
    ) -> list[Hit]:
        """The k images most like an indexed one (itself left out), from its stored embedding."""
        hits = self.search_vector(
            self.item_vector(item_id), k=k + 1, prefix=prefix, taken_after=taken_after,
            taken_before=taken_before,
        )  # fmt: skip
        others = [h for h in hits if h.id != item_id][:k]
        return [Hit(rank, h.id, h.score, h.path) for rank, h in enumerate(others, 1)]

    def search(
        self,
        terms: Sequence[QueryTerm],
        *,
        k: int = 10,
        under: str | Path | None = None,
        min_score: float | None = None,
        taken_after: When | None = None,
        taken_before: When | None = None,
    ) -> list[Hit]:
        """The k images closest to the query, best first (see search_vector for the filters)."""
        taken_range(taken_after, taken_before)  # a bad date fails before the model loads
        return self.search_vector(
            self.embed(terms), k=k, under=under, min_score=min_score, taken_after=taken_after,
            taken_before=taken_before,
        )  # fmt: skip

    def search_vector(
        self,
        query: np.ndarray,
        *,
        k: int = 10,
        under: str | Path | None = None,
        min_score: float | None = None,
        prefix: str | None = None,
        taken_after: When | None = None,
        taken_before: When | None = None,
    ) -> list[Hit]:
        """The k images closest to a query vector float32 (d,), best first.

        under: a folder (absolute, or relative to the current folder or the root); prefix: a
        folder already relative to the root, used as given (nothing is looked up on disk).
        taken_after, taken_before: only images taken from the start of one period up to the
        end of another (`2023`, `2023-07`, `2023-07-14`; a date and time or a datetime is an
        instant; see retrieval.dates). Every filter is applied inside the index search.
        """
        if k < 1:
            raise QueryError(f"-k must be at least 1, not {k}")
        catalog = self.collection.catalog
        if under is not None:
            prefix = self.relative_prefix(under)
        allowed = self._allowed_ids(prefix, *taken_range(taken_after, taken_before))
        if allowed is not None and allowed.size == 0:
            return []
        if self.image_index is None:
            scores, ids = self.collection.search(query[None, :], k, allowed_ids=allowed)
        else:
            scores, ids = self.image_index.search(
                query[None, :], k, allowed_ids=allowed, version=catalog.version
            )
        found = catalog.by_ids(i for i in ids[0] if i >= 0)
        hits = []
        for score, item_id in zip(scores[0], ids[0], strict=True):
            item = found.get(int(item_id))
            if item is None or (min_score is not None and score < min_score):
                continue
            path = self.collection.root / item.path
            hits.append(Hit(len(hits) + 1, int(item_id), float(score), path))
        return hits

    def _allowed_ids(
        self, prefix: str | None, after: int | None, before: int | None
    ) -> np.ndarray | None:
        """The ids int64 (n,) that the folder and date filters let through; None: all."""
        catalog = self.collection.catalog
        allowed = None
        if prefix:
            allowed = np.asarray(catalog.ids_under(prefix), dtype=np.int64)
        if after is not None or before is not None:
            taken = np.asarray(catalog.ids_taken(after, before), dtype=np.int64)
            allowed = taken if allowed is None else np.intersect1d(allowed, taken)
        return allowed

    def describe(self, image: str | Path, *, k: int = 5, source: str = "auto") -> list[TextHit]:
        """The k texts closest to an image file, best first.

        source: 'texts' (the collection's own texts), 'vocabulary' (ImageNet's classes), or
        'auto' (the collection's texts when it has any, else the vocabulary).
        """
        _check_describe(k, source)
        return self.describe_vector(self.encode_image_files([Path(image)])[0], k=k, source=source)

    def describe_vector(
        self, query: np.ndarray, *, k: int = 5, source: str = "auto"
    ) -> list[TextHit]:
        """As describe, for an image's embedding float32 (d,)."""
        _check_describe(k, source)
        has_texts = self.collection.catalog.count_texts() > 0
        if source == "texts" or (source == "auto" and has_texts):
            if not has_texts:
                raise QueryError(
                    "the collection holds no texts; add some with `retrieval add-texts`"
                )
            return self._describe_from_texts(query, k)
        names, vectors = vocabulary(self.encoder)
        best, scores = top_k(vectors @ query, k)
        return [TextHit(r + 1, float(scores[r]), names[i]) for r, i in enumerate(best)]

    def _describe_from_texts(self, query: np.ndarray, k: int) -> list[TextHit]:
        scores, ids = self.collection.search(query[None, :], k, kind=TEXT)
        texts = self.collection.catalog.texts_by_ids(i for i in ids[0] if i >= 0)
        hits = []
        for score, text_id in zip(scores[0], ids[0], strict=True):
            if int(text_id) in texts:
                hits.append(TextHit(len(hits) + 1, float(score), texts[int(text_id)], int(text_id)))
        return hits

    def relative_prefix(self, under: str | Path) -> str:
        """A --under argument as a path prefix relative to the root ('' for all of it)."""
        return under_prefix(self.collection.root, under)


def _check_describe(k: int, source: str) -> None:
    if k < 1:
        raise QueryError(f"-k must be at least 1, not {k}")
    if source not in ("auto", "texts", "vocabulary"):
        raise QueryError(f"unknown source {source!r}; use auto, texts or vocabulary")
