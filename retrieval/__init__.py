"""Cross-modal retrieval: index photo collections with open_clip and search them with FAISS.

from retrieval import index_folder, Searcher, parse_query
report = index_folder("~/Pictures")
with Searcher.open("~/Pictures/.retrieval") as searcher:
    hits = searcher.search(parse_query(["a dog on a beach"]), k=5)
"""

from index.manifest import ModelIdentity

from .bench import RecallReport, run_benchmark
from .datasets import CaptionedDataset, DatasetError, load_dataset
from .errors import ImageReadError, ModelLoadError, QueryError, RetrievalError
from .indexer import IndexProgress, IndexReport, SkippedFile, index_folder
from .info import CollectionInfo, collection_info
from .models import DEFAULT_MODEL, Encoder, load_encoder, model_identity
from .recall import recall_at_k
from .search import Hit, QueryTerm, Searcher, TextHit, parse_query, parse_term
from .texts import TextsReport, add_texts, read_texts

__all__ = [
    "DEFAULT_MODEL",
    "CaptionedDataset",
    "CollectionInfo",
    "DatasetError",
    "Encoder",
    "Hit",
    "ImageReadError",
    "IndexProgress",
    "IndexReport",
    "ModelIdentity",
    "ModelLoadError",
    "QueryError",
    "QueryTerm",
    "RecallReport",
    "RetrievalError",
    "Searcher",
    "SkippedFile",
    "TextHit",
    "TextsReport",
    "add_texts",
    "collection_info",
    "index_folder",
    "load_dataset",
    "load_encoder",
    "model_identity",
    "parse_query",
    "parse_term",
    "read_texts",
    "recall_at_k",
    "run_benchmark",
]
