"""Errors of the cluster path. Messages are complete sentences meant for the user."""

from ..errors import RetrievalError


class ClusterError(RetrievalError):
    """The cluster cannot be reached, cannot see the files, or a shard failed for good."""
