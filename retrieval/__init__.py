"""Cross-modal retrieval: index photo collections with open_clip and search them with FAISS.

from retrieval import index_folder, Searcher, parse_query
report = index_folder("~/Pictures")
with Searcher.open("~/Pictures/.retrieval") as searcher:
    hits = searcher.search(parse_query(["a dog on a beach"]), k=5)

Names are imported on first use, so that `import retrieval.encoders.tokenizer` (the query path)
pays for nothing else.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelIdentity": "index.manifest",
    "RecallReport": ".eval.bench",
    "run_benchmark": ".eval.bench",
    "CaptionedDataset": ".eval.datasets",
    "DatasetError": ".eval.errors",
    "load_dataset": ".eval.datasets",
    "ImageReadError": ".errors",
    "ModelLoadError": ".encoders.errors",
    "QueryError": ".errors",
    "RetrievalError": ".errors",
    "index_folder": ".indexer",
    "reindex": ".upkeep",
    "CollectionInfo": ".info",
    "collection_info": ".info",
    "DEFAULT_MODEL": ".encoders.identity",
    "Encoder": ".encoders.protocol",
    "load_encoder": ".encoders",
    "model_identity": ".encoders.identity",
    "recall_at_k": ".eval.recall",
    "IndexProgress": ".reports",
    "IndexReport": ".reports",
    "SkippedFile": ".reports",
    "Hit": ".search",
    "QueryTerm": ".search",
    "Searcher": ".search",
    "TextHit": ".search",
    "parse_query": ".search",
    "parse_term": ".search",
    "TextsReport": ".texts",
    "add_texts": ".texts",
    "read_texts": ".texts",
    "TrainConfig": ".training",
    "TrainReport": ".training",
    "train": ".training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
