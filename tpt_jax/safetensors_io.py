"""Safetensors read and write through the `safetensors` library (its NumPy API: no torch).

Files are opened lazily: opening reads and checks only the header, `get` reads one tensor and
`get_slice` returns a view that reads only the block it is indexed with, so a loader copies out
just the slices its devices need and a 70B checkpoint is never materialised whole on one host.
Every malformed file (truncated, corrupt header, missing shard, a tensor its index lists but it
lacks) is a one-line `CheckpointError` naming the file, and the tensor where one is at fault.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

# safetensors' NumPy reader asks numpy for the dtype named "bfloat16", a name that only exists
# once ml_dtypes has registered it: without this import every BF16 tensor fails to read.
import ml_dtypes  # noqa: F401
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from tpt_jax.errors import CheckpointError

# Dtype codes the NumPy reader returns as arrays (its float8 / float4 codes have no NumPy type).
_READABLE = frozenset(
    {"F64", "F32", "F16", "BF16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL"}
)
# Library reasons that mean the bytes stop before (or go on after) what the header describes.
_TRUNCATED = ("incomplete metadata", "header too small", "invalid header length")
_MAX_HEADER = 100 * 2**20  # the library's own limit


class TensorSlice:
    """One tensor, read only when indexed: `t[index]` (basic slices, step 1) reads that block."""

    def __init__(self, handle: Any, name: str) -> None:
        self._handle, self.name = handle, name
        self._slice = handle.get_slice(name)
        self.shape: tuple[int, ...] = tuple(self._slice.get_shape())

    @property
    def dtype(self) -> np.dtype:
        # Read from one element rather than kept in a code -> dtype table of our own.
        if 0 in self.shape:
            return self._handle.get_tensor(self.name).dtype  # no bytes to read
        return self._slice[(slice(0, 1),) * len(self.shape)].dtype

    def __getitem__(self, index: slice | tuple[slice, ...]) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index += (slice(None),) * (len(self.shape) - len(index))
        box = []
        for s, n in zip(index, self.shape, strict=True):
            if not isinstance(s, slice) or s.step not in (None, 1):
                raise TypeError(f"tensor {self.name!r}: only step-1 slices are read, got {s!r}")
            start, stop, _ = s.indices(n)
            box.append(slice(start, max(start, stop)))
        if any(s.start == s.stop for s in box):  # the library cannot read an empty block
            return np.empty([s.stop - s.start for s in box], self.dtype)
        return self._slice[tuple(box)]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self._handle.get_tensor(self.name)
        return whole if dtype is None else whole.astype(dtype)


class SafetensorsFile:
    """Lazy view of one `.safetensors` file: `keys()`, `shape(name)`, `get(name)` (one tensor,
    read whole), `get_slice(name)` (a `TensorSlice`) and `metadata`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self._handle = safe_open(self.path, framework="numpy")
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read ({e})") from None
        except SafetensorError as e:
            raise CheckpointError(f"{self.path}: {_explain(self.path, e)}") from None
        self.metadata: dict[str, str] = self._handle.metadata() or {}
        self._keys = self._handle.keys()
        self._key_set = set(self._keys)
        for name in self._keys:
            code = self._handle.get_slice(name).get_dtype()
            if code not in _READABLE:
                raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")

    def __contains__(self, name: str) -> bool:
        return name in self._key_set

    def keys(self) -> list[str]:
        return list(self._keys)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle.get_slice(name).get_shape())

    def get(self, name: str) -> np.ndarray:
        return self._handle.get_tensor(name)

    def get_slice(self, name: str) -> TensorSlice:
        return TensorSlice(self._handle, name)


def _explain(path: Path, e: SafetensorError) -> str:
    """The library's header error as our message: 'truncated ...' when the sizes disagree."""
    reason = " ".join(str(e).removeprefix("Error while deserializing header: ").split())
    if reason.startswith(_TRUNCATED):
        return f"truncated or corrupt ({reason}; the file has {path.stat().st_size} bytes)"
    bad = _bad_entry(path)
    return f"corrupt safetensors header: {f'tensor {bad!r}: ' if bad else ''}{reason}"


def _bad_entry(path: Path) -> str | None:
    """The first header entry that is not a tensor description, to name it in the message.

    Kept by hand because the library reports a JSON column, not the entry's name. It only
    words the error of a header the library already refused; reading never uses it.
    """
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(n, _MAX_HEADER)))
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict):
        return None
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        fields = entry.keys() if isinstance(entry, dict) else ()
        if not {"dtype", "shape", "data_offsets"} <= set(fields):
            return name
        if not (isinstance(entry["shape"], list) and isinstance(entry["data_offsets"], list)):
            return name
    return None


def write_safetensors(
    path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write `tensors` to `path` (`safetensors.numpy.save_file`; ml_dtypes bfloat16 included).

    `metadata` defaults to `{"format": "pt"}`, which transformers expects to find.
    """
    # save_file copies each array's buffer from its data pointer, so a strided view (a transpose)
    # would be written in memory order, scrambled: make every array C-contiguous first.
    arrays = {name: np.ascontiguousarray(t) for name, t in tensors.items()}
    try:
        save_file(arrays, path, metadata=metadata or {"format": "pt"})
    except SafetensorError as e:
        raise TypeError(f"{path}: cannot write these tensors ({e})") from None


class SafetensorsDir:
    """All tensors of a HF checkpoint directory: one file, or shards listed by an index.

    `listing` is the file that lists the tensors (the index, or the single file): a tensor a
    model needs but the directory lacks is reported against it.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.exists():
            self.listing = index
            weight_map = _weight_map(index)
            files = {}
            for shard in sorted(set(weight_map.values())):
                if not (directory / shard).is_file():
                    raise CheckpointError(f"{directory / shard}: not found (listed in {index})")
                files[shard] = SafetensorsFile(directory / shard)
            self._where = {k: files[f] for k, f in weight_map.items()}
            for k, f in self._where.items():
                if k not in f:
                    raise CheckpointError(f"{f.path}: index lists tensor {k!r} but it is missing")
        else:
            single = directory / "model.safetensors"
            if not single.exists():
                raise CheckpointError(f"{directory}: no model.safetensors or its index")
            self.listing = single
            f = SafetensorsFile(single)
            self._where = {k: f for k in f.keys()}

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def file_of(self, name: str) -> Path:
        return self._where[name].path

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get(name)

    def get_slice(self, name: str) -> TensorSlice:
        return self._where[name].get_slice(name)


def _weight_map(index: Path) -> dict[str, str]:
    """The index's `weight_map` (tensor -> shard file name), checked entry by entry."""
    try:
        raw = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index}: corrupt index ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{index}: expected a JSON object at the top level")
    if "weight_map" not in raw:
        raise CheckpointError(f"{index}: missing key 'weight_map'")
    weight_map = raw["weight_map"]
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map: expected an object, got {weight_map!r:.60}")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise CheckpointError(f"{index}: weight_map[{name!r}]: expected a file name")
    return weight_map
