"""Multi-process JAX (a TPU pod slice, a GPU cluster, or `launch/local.sh` on one machine).

Every process runs the same program on the same inputs (JAX's multi-controller model), so host
data such as a packed batch or a list of prompts is identical everywhere; each process hands
its own devices their shards of it (`to_global`), and results come back to every process whole
(`to_host`), so the host-side logic that follows (the engine's scheduler, PRUNE) makes the
same decisions everywhere. Only process 0 writes shared files (`is_primary`).

`initialize` starts the runtime from the launcher's environment:
- `TPT_MULTIHOST=1` alone: `jax.distributed.initialize()` with JAX's cluster auto-detection
  (Cloud TPU VMs, SLURM, Open MPI, GKE);
- plus `TPT_COORDINATOR=host:port`, `TPT_NUM_PROCESSES`, `TPT_PROCESS_ID` (what
  `launch/local.sh` sets): those, with CPU collectives over gloo so that processes sharing one
  machine's CPU can all-reduce.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tpt_jax.errors import TptError


def initialize() -> None:
    """Join the other processes of a multi-host launch; nothing for a single process."""
    if os.environ.get("TPT_MULTIHOST") != "1":
        return
    coordinator = os.environ.get("TPT_COORDINATOR")
    if not coordinator:
        jax.distributed.initialize()
        return
    try:
        count = int(os.environ["TPT_NUM_PROCESSES"])
        index = int(os.environ["TPT_PROCESS_ID"])
    except (KeyError, ValueError) as e:
        raise TptError(
            "TPT_COORDINATOR needs TPT_NUM_PROCESSES and TPT_PROCESS_ID (integers)"
        ) from e
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=count, process_id=index)


def is_primary() -> bool:
    """Whether this process writes the files every process would otherwise write alike."""
    return jax.process_index() == 0


def to_global(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same on every process) as global arrays with these shardings.

    One process: `jax.device_put`. Several: each process builds only its own devices' shards
    (`device_put` refuses shardings over devices another process owns)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def as_global(tree: Any) -> Any:
    """`tree` with each process-local array (one this process alone holds, the same on every
    process, e.g. a model initialized from the same seed everywhere) made global, replicated on
    every device: what a multi-process save needs, since each process writes only its shards."""
    if jax.process_count() == 1:
        return tree
    everywhere = NamedSharding(Mesh(np.asarray(jax.devices()), ("all",)), PartitionSpec())

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        return to_global(np.asarray(x), everywhere)

    return jax.tree.map(one, tree)


def to_host(tree: Any) -> Any:
    """Global arrays as whole NumPy arrays on every process (a gather across processes when
    they span several; one transfer for the whole tree either way)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def barrier(name: str) -> None:
    """Wait until every process reaches this point (no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
