"""Indexing a folder into a collection, incrementally and safely interruptible.

Each batch commits its vectors and catalog rows together, so an interrupted run loses at most
the batch in flight, and the next run goes on from there. Files are recognised by content hash:
a renamed, moved or copied photo is never encoded again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from index import compaction, integrity
from index.catalog import STATUS_OK, STATUS_STALE, Item
from index.collection import Collection, NewImage, default_dir
from index.manifest import ModelIdentity
from index.opening import check_dir

from .capture import fill_capture_times
from .collection_model import check_encoder, encoder_for
from .encoders import load_encoder
from .encoders.identity import DEFAULT_MODEL
from .encoders.protocol import Encoder
from .errors import ImageReadError, RetrievalError
from .gpu_decode import JpegDecoder, JpegJob
from .images import load_image
from .index_checks import GPU_DECODE_NEEDS, check_collection, check_decode, check_options
from .pipeline import Decoded, decode_files, warm_up
from .remote_encoding import EncodeRequest, FileEncoder
from .reports import IndexProgress, IndexReport, ProgressCallback, SkippedFile
from .revisit import change_stat, must_read
from .scan import FileInfo, ScanProblem, out_of_sight, scan, stat_files


def index_folder(
    root: Path,
    *,
    collection_dir: Path | None = None,
    model: ModelIdentity | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    exclude: Sequence[str] = (),
    embedding_dtype: str | None = None,
    progress: ProgressCallback | None = None,
    encoder: Encoder | None = None,
    paths: Sequence[str] | None = None,
    draft: bool = True,
    backend: str = "auto",
    decode: str = "auto",
    encode_files: FileEncoder | None = None,
) -> IndexReport:
    """Index the images under `root` into its collection (default: ROOT/.retrieval).

    paths: index exactly these files (relative to root) instead of scanning the folder; the
    collection then holds only them (a dataset's images among other files, say).
    batch_size: images per model call (default: default_batch_size).
    embedding_dtype: how a new collection stores embeddings: float16 (the default: half the
    disk and memory) or float32.
    draft: decode large JPEGs at a reduced DCT scale (fast); False decodes every pixel, as
    open_clip's reference preprocessing does (benchmarks that must match published numbers).
    backend: auto (ONNX Runtime on a CPU, PyTorch on CUDA), torch, or onnx (precision fp32 or
    int8).
    decode: where JPEGs are decoded: cpu (worker threads), gpu (nvJPEG, batched, on the CUDA
    device that encodes; other formats and files it refuses still go to the CPU), or auto
    (for now the CPU: benchmarks/gpu_check.sh measures which is faster).
    encode_files: read and encode the new and changed files elsewhere (retrieval.cluster).

    A new collection is built with `model` (default ViT-B-32 laion2b_s34b_b79k); an existing
    one keeps its own model and refuses another. The model is loaded only if some file needs
    encoding, so re-indexing an unchanged folder costs one stat per file.
    """
    root = Path(root).expanduser().resolve()
    check_options(root, batch_size, embedding_dtype)
    check_decode(decode, device, backend, encoder)
    directory = Path(collection_dir).expanduser().resolve() if collection_dir else default_dir(root)
    created = None  # the encoder of a new collection, which the collection records
    if not Collection.exists(directory):
        check_dir(directory)  # a file, or a place that cannot be written: say so before loading
        created = encoder = encoder or load_encoder(
            model or DEFAULT_MODEL, device=device, precision=precision, backend=backend
        )
        jpeg_decoder(decode, encoder)  # refuses a --decode it cannot serve: no folder yet
    collection = Collection.open_or_create(
        directory,
        root=root,
        model=model if created is None else model or DEFAULT_MODEL,
        dim=None if created is None else created.dim,
        preprocess=None if created is None else created.preprocess_cfg,
        embedding_dtype=embedding_dtype or "float16",
    )

    def get_encoder() -> Encoder:
        nonlocal encoder
        if encoder is None:
            encoder = encoder_for(collection, device=device, precision=precision, backend=backend)
        check_encoder(collection, encoder)
        return encoder

    with collection:
        check_collection(collection, root, embedding_dtype)
        with collection.locked():
            if created is not None:
                collection.record_encoder(
                    created.weights_hash, backend=created.backend, precision=created.precision
                )
            run = _IndexRun(collection, root, get_encoder, batch_size, workers, progress, draft)
            run.decode, run.encode_files = decode, encode_files
            try:
                return run.execute(exclude, paths)
            except KeyboardInterrupt:
                # Whatever was committed stays; make the saved index match it before leaving.
                collection.sync_index()
                raise


def default_batch_size(encoder: Encoder) -> int:
    """16 images a call on a CPU (ViT-B-32 on ONNX Runtime: less CPU per image than 32, whose
    activations outgrow the caches, and the model starts sooner); 256 on a GPU, whose encoder
    halves a batch that runs out of memory and keeps to the size that fitted."""
    return 256 if str(getattr(encoder, "device", "cpu")).startswith("cuda") else 16


def jpeg_decoder(decode: str, encoder: Encoder) -> JpegDecoder | None:
    """The device decoder that --decode asks for, or None to decode on the CPU."""
    if decode != "gpu":
        return None  # auto: the CPU, until benchmarks/gpu_check.sh shows nvJPEG ahead
    device = str(getattr(encoder, "device", "cpu"))
    if encoder.backend != "torch" or not device.startswith("cuda"):
        raise RetrievalError(GPU_DECODE_NEEDS)
    interpolation = encoder.preprocess_cfg.get("interpolation", "bicubic")
    resize_mode = encoder.preprocess_cfg.get("resize_mode", "shortest")
    if interpolation != "bicubic" or resize_mode not in ("shortest", "squash"):
        raise RetrievalError(
            f"--decode gpu does not support this model's preprocessing ({interpolation}, "
            f"{resize_mode}); use --decode cpu"
        )
    return JpegDecoder(device, encoder.image_size, resize_mode, _cpu_fallback(encoder))


def _cpu_fallback(encoder: Encoder) -> Callable[[bytes, str], np.ndarray]:
    def decode_on_cpu(data: bytes, name: str) -> np.ndarray:
        return encoder.prepare(load_image(data, min_size=encoder.min_side, name=name))

    return decode_on_cpu


class _IndexRun:
    def __init__(
        self,
        collection: Collection,
        root: Path,
        get_encoder: Callable[[], Encoder],
        batch_size: int | None,
        workers: int | None,
        progress: ProgressCallback | None,
        draft: bool = True,
    ) -> None:
        self.collection = collection
        self.draft = draft
        self.catalog = collection.catalog
        self.root = root
        self.get_encoder = get_encoder
        self.batch_size = batch_size
        self.workers = workers
        self.progress = progress or (lambda _event: None)
        self.report = IndexReport(root=root, collection=collection.dir)
        self.by_path: dict[str, Item] = {}
        self.by_hash: dict[str, list[Item]] = {}
        self.missing: dict[int, Item] = {}
        self.batch: list[Decoded] = []
        self.decode = "auto"
        self.jpeg_decoder: JpegDecoder | None = None
        self.encode_files: FileEncoder | None = None

    def execute(self, exclude: Sequence[str], paths: Sequence[str] | None) -> IndexReport:
        started = time.perf_counter()
        problems: list[ScanProblem] = []
        if paths is None:
            files = list(scan(self.root, exclude=exclude, problems=problems))
        else:
            files = list(stat_files(self.root, paths, problems))
        self.progress(IndexProgress("scan", len(files), len(files)))
        todo = self._plan(files)
        self._record_problems(problems)
        if todo:
            self._process(todo)
        self._remove_missing()
        self.report.dated = fill_capture_times(self.collection, self.workers, self.progress)
        self.report.compacted = compaction.compact_if_due(self.collection)
        if self.report.compacted:  # the thumbnails of the dropped rows' files go too
            integrity.drop_orphan_thumbnails(self.collection)
        self.collection.sync_index()
        self.report.seconds = time.perf_counter() - started
        return self.report

    def _plan(self, files: list[FileInfo]) -> list[FileInfo]:
        """Split the scan into unchanged files and files to read; note the missing ones."""
        items = self.catalog.items()
        self.by_path = {item.path: item for item in items}
        for item in items:
            if item.status == STATUS_OK and item.hash:
                self.by_hash.setdefault(item.hash, []).append(item)
        present = set()
        todo = []
        for file in files:
            present.add(file.path)
            item = self.by_path.get(file.path)
            if not must_read(self.catalog, self.root, item, file):
                self.report.unchanged += item.status == STATUS_OK
                if item.status != STATUS_OK:
                    self.report.skipped.append(SkippedFile(item.path, item.error or "", new=False))
            else:
                todo.append(file)
        self.missing = {i.id: i for i in items if i.path not in present}
        return todo

    def _process(self, todo: list[FileInfo]) -> None:
        if self.encode_files is not None:
            known = frozenset(self.by_hash)
            for batch in self.encode_files(EncodeRequest(self.collection, self.root, todo, known,
                    self.batch_size, self.workers, self.draft, self.progress)):  # fmt: skip
                self.report.encoded += batch.newly_encoded
                self.report.encode_seconds += batch.seconds
                self._store(batch.encoded, batch.vectors, batch.others)
            return
        encoder = self.get_encoder()
        warm_up(encoder)
        self.batch_size = self.batch_size or default_batch_size(encoder)
        self.jpeg_decoder = jpeg_decoder(self.decode, encoder)
        ahead = 1 if self.jpeg_decoder is not None else 2
        decoded = decode_files(
            self.root,
            todo,
            prepare=encoder.prepare,
            min_side=encoder.min_side if self.draft else None,
            known_hashes=frozenset(self.by_hash),
            workers=self.workers,
            # Batches ahead: the next one is ready when the model finishes this one. Undecoded
            # JPEGs (for the device) are megabytes each, not a model input's 150 KB: one ahead.
            window=ahead * self.batch_size + (self.workers or 0) + 2,
            jpeg_to_device=self.jpeg_decoder is not None,
        )
        pending: list[Decoded] = []
        for done, result in enumerate(decoded, 1):
            if result.decodable:
                self.batch.append(result)
            else:
                pending.append(result)
            if len(self.batch) >= self.batch_size or len(pending) >= 256:
                self._commit(encoder, pending)
                pending = []
                self.progress(IndexProgress("encode", done, len(todo)))
        self._commit(encoder, pending)
        self.progress(IndexProgress("encode", len(todo), len(todo)))

    def _commit(self, encoder: Encoder, others: list[Decoded]) -> None:
        """Encode the batch and commit it with the non-encoded results, in one transaction."""
        batch, self.batch = self.batch, []
        vectors = None
        if batch:
            started = time.perf_counter()
            pixels, batch, failed = self._model_input(batch)
            others = others + failed
            if batch:
                vectors = encoder.encode_images(pixels)
                self.report.encoded += len(batch)
            self.report.encode_seconds += time.perf_counter() - started
        self._store(batch, vectors, others)

    def _store(self, batch: list[Decoded], vectors: Any, others: list[Decoded]) -> None:
        with self.catalog.transaction():
            if vectors is not None:
                files = [NewImage(r.file.path, r.file.size, r.file.mtime_ns, r.hash, r.width,
                                  r.height) for r in batch]  # fmt: skip
                items = self.collection.append_images(vectors, files)
                for item, result in zip(items, batch, strict=True):
                    self._count_new(item)
                    self.catalog.set_capture(item.id, result.capture)
            for result in others:
                if result.error is not None:
                    self._record_error(result)
                else:
                    self._reuse(result)

    def _model_input(self, batch: list[Decoded]) -> tuple[Any, list[Decoded], list[Decoded]]:
        """(uint8 (n, H, W, 3) model input, the results it holds, the results that failed).

        JPEGs left for the device are decoded there now, in one batch; the input is then a
        tensor on the device, where the CPU-decoded rest joins it."""
        if self.jpeg_decoder is None or all(d.jpeg is None for d in batch):
            return np.stack([d.pixels for d in batch]), batch, []
        import torch

        jobs = [JpegJob(d.jpeg, d.header, d.file.path) for d in batch if d.jpeg is not None]
        on_device = iter(self.jpeg_decoder.decode(jobs))
        images, kept, failed = [], [], []
        for result in batch:
            if result.jpeg is None:
                image = torch.from_numpy(result.pixels.copy()).to(self.jpeg_decoder.device)
            else:
                image = next(on_device)
                if isinstance(image, ImageReadError):
                    failed.append(replace(result, jpeg=None, error=image.reason))
                    continue
            images.append(image)
            kept.append(result)
        return (torch.stack(images) if images else None), kept, failed

    def _count_new(self, item: Item) -> None:
        """Account for a file just committed as item with an embedding (new or reused)."""
        old = self.by_path.get(item.path)
        if old is not None and old.status in (STATUS_OK, STATUS_STALE):
            self.report.updated += 1
        else:
            self.report.added += 1
        self._remember(item)

    def _reuse(self, result: Decoded) -> None:
        """A file whose content is already embedded: touched, renamed, or a copy."""
        file = result.file
        old = self.by_path.get(file.path)
        if old is not None and old.hash == result.hash and old.status == STATUS_OK:
            self.catalog.touch(old.id, file.size, file.mtime_ns)
            self.report.unchanged += 1
            return
        candidates = self.by_hash[result.hash]
        moved = next((c for c in candidates if c.id in self.missing), None)
        if moved is not None:
            if old is not None:
                self.catalog.delete([old.id])
            self.catalog.move(moved.id, file.path, file.size, file.mtime_ns)
            del self.missing[moved.id]
            self.report.renamed += 1
            if old is not None and old.status == STATUS_OK:
                self.report.removed += 1
            return
        source = candidates[0]
        item_id = self.catalog.put_ok(
            file.path, file.size, file.mtime_ns, result.hash, source.width, source.height,
            source.row,
        )  # fmt: skip
        self._count_new(Item(item_id, file.path, file.size, file.mtime_ns, result.hash,
                             source.width, source.height, STATUS_OK, None, source.row))  # fmt: skip

    def _remember(self, item: Item) -> None:
        self.by_path[item.path] = item
        self.by_hash.setdefault(item.hash or "", []).append(item)

    def _record_error(self, result: Decoded) -> None:
        file = result.file
        old = self.by_path.get(file.path)
        ctime_ns, mode = change_stat(self.root, file.path)
        self.catalog.put_error(file.path, file.size, file.mtime_ns, result.hash, result.error,
                               ctime_ns=ctime_ns, mode=mode)  # fmt: skip
        if old is not None and old.status == STATUS_OK:
            self.report.removed += 1
        self._skip(SkippedFile(file.path, result.error or ""))

    def _skip(self, skipped: SkippedFile) -> None:
        self.report.skipped.append(skipped)
        self.progress(IndexProgress("skip", 0, 0, skipped))

    # -- what the scan could not look at ------------------------------------------------------

    def _record_problems(self, problems: list[ScanProblem]) -> None:
        """Record each scan problem as a skipped entry, so that `info` lists it, and keep what an
        unreadable folder holds: it is out of sight, not gone."""
        if not problems:
            return
        self.missing = {
            i: item for i, item in self.missing.items() if not out_of_sight(item.path, problems)
        }
        with self.catalog.transaction():
            for problem in problems:
                old = self.by_path.get(problem.path)
                if old is not None and old.status != STATUS_OK and old.error == problem.error:
                    self.report.skipped.append(SkippedFile(problem.path, problem.error, new=False))
                    continue
                self.catalog.put_error(problem.path, 0, 0, None, problem.error)
                self.report.removed += old is not None and old.status == STATUS_OK
                self._skip(SkippedFile(problem.path, problem.error))

    def _remove_missing(self) -> None:
        if not self.missing:
            return
        with self.catalog.transaction():
            self.catalog.delete(self.missing)
        self.report.removed += sum(i.status == STATUS_OK for i in self.missing.values())
        self.missing = {}
