"""Cross-modal retrieval: index photo collections with open_clip and search them with FAISS.

from retrieval import index_folder, Searcher, parse_query
report = index_folder("~/Pictures")
with Searcher.open("~/Pictures/.retrieval") as searcher:
    hits = searcher.search(parse_query(["a dog on a beach"]), k=5)
"""

from index.manifest import ModelIdentity

from .errors import ImageReadError, ModelLoadError, QueryError, RetrievalError
from .indexer import IndexProgress, IndexReport, SkippedFile, index_folder
from .info import CollectionInfo, collection_info
from .models import DEFAULT_MODEL, Encoder, load_encoder, model_identity
from .search import Hit, QueryTerm, Searcher, parse_query, parse_term

__all__ = [
    "DEFAULT_MODEL",
    "CollectionInfo",
    "Encoder",
    "Hit",
    "ImageReadError",
    "IndexProgress",
    "IndexReport",
    "ModelIdentity",
    "ModelLoadError",
    "QueryError",
    "QueryTerm",
    "RetrievalError",
    "Searcher",
    "SkippedFile",
    "collection_info",
    "index_folder",
    "load_encoder",
    "model_identity",
    "parse_query",
    "parse_term",
]
