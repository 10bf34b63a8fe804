"""Where the work runs: parsing --cluster and connecting to Ray."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

from .errors import ClusterError

# A private local cluster's shared-memory object store: shards travel through the collection's
# folder, not the object store, so a small one is enough and spares the machine's memory.
LOCAL_OBJECT_STORE_BYTES = 200 * 2**20

_LOCAL = re.compile(r"local(?::(\d+))?")


@dataclass(frozen=True)
class ClusterAddress:
    """kind: 'none' (this process), 'local' (a private Ray cluster of cpus slots on this
    machine), 'auto' (the cluster this process runs in) or 'remote' (a Ray client address)."""

    kind: str
    cpus: int | None = None
    address: str | None = None


def parse_cluster(text: str) -> ClusterAddress:
    """none | local[:N] | auto | ray://HOST:PORT."""
    text = text.strip()
    if text == "none":
        return ClusterAddress("none")
    if text == "auto":
        return ClusterAddress("auto", address="auto")
    if text.startswith("ray://") and len(text) > len("ray://"):
        return ClusterAddress("remote", address=text)
    match = _LOCAL.fullmatch(text)
    if match:
        cpus = int(match.group(1)) if match.group(1) else os.cpu_count() or 1
        if cpus < 1:
            raise ClusterError(f"--cluster {text}: a local cluster needs at least 1 CPU slot")
        return ClusterAddress("local", cpus=cpus)
    raise ClusterError(f"--cluster {text}: give none, local, local:N, auto or ray://HOST:PORT")


RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def connected(cluster: ClusterAddress) -> Iterator[None]:
    """Ray, initialised for `cluster` for the duration; a Ray already initialised in this
    process (a program that set it up itself) is used as it is and left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    options: dict = {"log_to_driver": False, "configure_logging": False}
    if cluster.kind == "local":
        options.update(num_cpus=cluster.cpus, include_dashboard=False,
                       object_store_memory=LOCAL_OBJECT_STORE_BYTES)  # fmt: skip
        # A private cluster turns on token authentication, as it should, and says so on stderr
        # at every start; that line is noise between the user and the index run's own output.
        logging.getLogger(RAY_AUTH_LOGGER).setLevel(logging.ERROR)
    else:
        options["address"] = cluster.address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = "a local cluster" if cluster.kind == "local" else cluster.address
        raise ClusterError(f"cannot start or reach the Ray cluster at {where}: {e}") from e
    try:
        yield
    finally:
        ray.shutdown()


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError as e:
        raise ClusterError(
            "--cluster needs Ray on this machine and the workers: pip install 'retrieval[cluster]'"
        ) from e
    return ray
