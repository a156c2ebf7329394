"""A safetensors reader: the header parsed and checked here, every tensor a read-only numpy
view into one memory map of the file, so loading makes no second copy of the weights."""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

# safetensors dtype codes -> numpy; BF16 is read as uint16 and widened at load.
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
    """A read-only, memory-mapped safetensors file: ``names()`` and ``get(name)`` views."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            fh = open(self.path, "rb")
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from None
        with fh:
            size = self.path.stat().st_size
            if size < 8:
                raise CheckpointError(f"{self.path}: not a safetensors file ({size} bytes, too short for a header)")
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > min(size - 8, 100 << 20):
                raise CheckpointError(
                    f"{self.path}: not a safetensors file (header length {n} does not fit in {size} bytes)")
            try:
                header = json.loads(fh.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"{self.path}: not a safetensors file (header is not JSON)") from None
            if not isinstance(header, dict):
                raise CheckpointError(f"{self.path}: not a safetensors file (header is not a JSON object)")
            self.metadata = header.pop("__metadata__", None) or {}
            self.header = header
            self._data_start = 8 + n
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
        data_len = size - self._data_start
        for name, info in header.items():
            try:
                begin, end = info["data_offsets"]
                dtype = info["dtype"]
                shape = tuple(info["shape"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry") from None
            if dtype not in _DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
            if end > data_len:
                raise CheckpointError(
                    f"{self.path}: truncated: tensor {name!r} ends at byte {end} of the data section "
                    f"but the file holds only {data_len} bytes of data")
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
            if end - begin != nbytes:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r}: {end - begin} bytes stored for shape {list(shape)} {dtype}")

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """A zero-copy view for F32; F16/BF16 widened to float32 (one copy of that tensor)."""
        info = self.header[name]
        begin, end = info["data_offsets"]
        a = np.frombuffer(self._map, dtype=_DTYPES[info["dtype"]], count=(end - begin) // np.dtype(
            _DTYPES[info["dtype"]]).itemsize, offset=self._data_start + begin).reshape(info["shape"])
        if info["dtype"] == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if a.dtype in (np.float16, np.float64):
            return a.astype(np.float32)
        return a
