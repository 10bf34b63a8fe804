"""The Ray scale-out: the same `index` run, with decoding and encoding on a cluster's workers.

Optional (`pip install 'retrieval[cluster]'`): nothing outside this package imports Ray, and
this package imports it only when a cluster is asked for. The driver scans, plans and is the
only writer of the catalog and the manifest; workers read the files from shared storage,
encode shards of them and leave the results in the collection's `shards/` folder, which the
driver verifies and commits in order (retrieval.cluster.shards).
"""

from __future__ import annotations

from .address import ClusterAddress, parse_cluster
from .errors import ClusterError
from .indexing import DEFAULT_SHARD_SIZE, index_on_cluster

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "ClusterAddress",
    "ClusterError",
    "index_on_cluster",
    "parse_cluster",
]
