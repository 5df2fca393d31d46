"""The only module that names mesh axes: the mesh, and the rules from logical axes to mesh axes.

Model code names logical axes (`embed`, `vocab`, `q_heads`, ...); a rules table maps each to a
mesh axis of `('data', 'fsdp', 'tensor')`. For weights, a mesh axis that does not divide a
dimension is dropped for that array (replicated instead), so one table serves every model size
and mesh. Batches are different: rows that do not divide over (data, fsdp) are an error
(`batch_sharding`), since replicating them would make every device compute the same rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from tpt_jax.errors import TptError

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

# Training: weights split over fsdp (ZeRO-3 style) and tensor (Megatron style).
TRAIN_RULES: Rules = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "vocab": "tensor",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "norm": None,
}
# Sampling: no optimizer state to spread, so weights stay whole along fsdp and only the tensor
# axis splits them; decoding then needs no weight all-gathers per step.
SAMPLE_RULES: Rules = {**TRAIN_RULES, "embed": None}


def make_mesh(
    shape: Sequence[int] | None = None,
    devices: Sequence | None = None,
    dcn: Sequence[int] | None = None,
) -> Mesh:
    """A `(data, fsdp, tensor)` mesh of `shape` (default: every device on `fsdp`).

    `dcn` says how many granules each axis spans, where a granule is a TPU slice (by the devices'
    `slice_index`), else a process (a GPU node, or a process of `launch/local.sh`):
    each axis's size is `dcn` granules x `shape // dcn` devices inside one, so only the `dcn`
    axes cross the slow data-centre network (the hybrid ICI x DCN meshes of multi-slice TPU
    runs). Without it the devices follow JAX's topology-aware order for one slice or node."""
    devices = list(devices if devices is not None else jax.devices())
    shape = tuple(shape) if shape is not None else (1, len(devices), 1)
    if len(shape) != 3:
        raise TptError(f"mesh shape {shape} must have 3 entries (data, fsdp, tensor)")
    if math.prod(shape) != len(devices):
        raise TptError(
            f"mesh shape {shape} needs {math.prod(shape)} devices but {len(devices)} are available"
        )
    if dcn is not None and math.prod(dcn) > 1:
        grid = _hybrid_grid(shape, tuple(dcn), devices)
    elif len(devices) == jax.device_count():  # the topology-aware order needs every device
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    else:
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _hybrid_grid(shape: tuple[int, ...], dcn: tuple[int, ...], devices: list) -> np.ndarray:
    if len(dcn) != 3 or any(n % d for n, d in zip(shape, dcn, strict=True)):
        raise TptError(f"dcn mesh {list(dcn)} must divide the mesh {list(shape)} axis by axis")
    by_slice = devices[0].platform == "tpu"  # CPU devices report a slice_index too, always 0
    granules = len({d.slice_index if by_slice else d.process_index for d in devices})
    if math.prod(dcn) != granules:
        what = "TPU slices" if by_slice else "processes"
        raise TptError(
            f"dcn mesh {list(dcn)} spans {math.prod(dcn)} granules but the devices are on "
            f"{granules} {what}; make the dcn sizes multiply to {granules}"
        )
    ici = tuple(n // d for n, d in zip(shape, dcn, strict=True))
    return mesh_utils.create_hybrid_device_mesh(
        ici, dcn, devices, process_is_granule=not by_slice, allow_split_physical_axes=True
    )


def logical_to_spec(
    axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = TRAIN_RULES
) -> PartitionSpec:
    """PartitionSpec for an array with these logical axes, dropping mesh axes that don't fit."""
    used: set[str] = set()
    out: list[MeshAxes] = []
    for name, dim in zip(axes, shape, strict=True):
        target = rules.get(name) if name else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        kept: list[str] = []
        for axis in names:
            size = mesh.shape[axis]
            if axis in used or size == 1 or dim % (size * math.prod(mesh.shape[a] for a in kept)):
                continue
            kept.append(axis)
        used.update(kept)
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out)


def _is_var(x: object) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = TRAIN_RULES) -> nnx.State:
    """A NamedSharding for every variable of an (abstract or real) model state."""

    def one(v: nnx.Variable) -> NamedSharding:
        axes = v.get_metadata().get("logical_axes") or (None,) * len(v.shape)
        return NamedSharding(mesh, logical_to_spec(axes, v.shape, mesh, rules))

    return jax.tree.map(one, state, is_leaf=_is_var)


def moved(x: jax.Array, sharding: NamedSharding, dtype: Any) -> jax.Array:
    """A fresh copy of `x` cast to `dtype` on `sharding` (any layout over the same devices),
    with `x` deleted at once: a jitted cast writes new buffers, where device_put may share the
    input's even across layouts. One compiled cast per (dtype, sharding, shape)."""
    y = _cast(jnp.dtype(dtype), sharding)(x).block_until_ready()
    x.delete()
    return y


@functools.lru_cache(maxsize=256)
def _cast(dtype: Any, sharding: NamedSharding) -> Any:
    return jax.jit(lambda a: a.astype(dtype), out_shardings=sharding)


def row_devices(mesh: Mesh) -> int:
    """How many ways a batch's rows split: the data x fsdp devices."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh, batch_size: int, ndim: int = 2) -> NamedSharding:
    """Rows split over (data, fsdp), other dimensions replicated. `batch_size` must be a
    multiple of data x fsdp: an error naming both sizes, never a silently replicated batch."""
    ways = row_devices(mesh)
    if batch_size % ways:
        raise TptError(
            f"a batch of {batch_size} rows does not split over the mesh's data x fsdp = "
            f"{mesh.shape['data']} x {mesh.shape['fsdp']} = {ways} devices; use a multiple of "
            f"{ways} rows"
        )
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *(None,) * (ndim - 1)))
