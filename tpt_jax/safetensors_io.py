"""Safetensors read (memory-mapped, tensor by tensor) and write, without torch.

Reading maps each tensor as a NumPy view of the file, so a loader can copy out only the slices
its devices need: a 70B checkpoint is never materialised whole on one host. Every offset is
checked against the file size, so truncated or corrupt files fail with a one-line error.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from tpt_jax.errors import CheckpointError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20


class SafetensorsFile:
    """Lazy view of one `.safetensors` file: `keys()`, `shape(name)`, `get(name)` (a memmap)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: not a safetensors file (too short)")
                (n,) = struct.unpack("<Q", head)
                if n > min(_MAX_HEADER, size - 8):
                    raise CheckpointError(f"{self.path}: corrupt or truncated safetensors header")
                header = json.loads(f.read(n))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            if isinstance(e, FileNotFoundError):
                raise CheckpointError(f"{self.path}: file not found") from None
            raise CheckpointError(f"{self.path}: unreadable safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = header
        self._data_start = 8 + n
        for name, e in header.items():
            if e.get("dtype") not in DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype")
            begin, end = e["data_offsets"]
            want = int(np.prod(e["shape"], dtype=np.int64)) * DTYPES[e["dtype"]].itemsize
            if end - begin != want:
                raise CheckpointError(f"{self.path}: tensor {name!r} has inconsistent size")
            if self._data_start + end > size:
                raise CheckpointError(
                    f"{self.path}: truncated: tensor {name!r} ends at byte "
                    f"{self._data_start + end} but the file has {size} bytes"
                )

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        e = self._entries[name]
        dtype, shape = DTYPES[e["dtype"]], tuple(e["shape"])
        if not shape or 0 in shape:
            return np.zeros(shape, dtype)
        return np.memmap(
            self.path,
            dtype=dtype,
            mode="r",
            offset=self._data_start + e["data_offsets"][0],
            shape=shape,
        )


def write_safetensors(
    path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write tensors in order; the header is padded to 8 bytes as the reference writer does."""
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _NAMES:
            raise TypeError(f"cannot write dtype {t.dtype} of tensor {name!r}")
        header[name] = {
            "dtype": _NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            f.write(np.ascontiguousarray(t).tobytes())


class SafetensorsDir:
    """All tensors of a HF checkpoint directory: one file, or shards listed by an index."""

    def __init__(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: corrupt index ({e})") from None
            files = {f: SafetensorsFile(directory / f) for f in sorted(set(weight_map.values()))}
            self._where = {k: files[f] for k, f in weight_map.items()}
            for k, f in self._where.items():
                if k not in f._entries:
                    raise CheckpointError(f"{f.path}: index lists tensor {k!r} but it is missing")
        else:
            single = directory / "model.safetensors"
            if not single.exists():
                raise CheckpointError(f"{directory}: no model.safetensors or its index")
            f = SafetensorsFile(single)
            self._where = {k: f for k in f.keys()}

    def keys(self) -> list[str]:
        return list(self._where)

    def file_of(self, name: str) -> Path:
        return self._where[name].path

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get(name)
