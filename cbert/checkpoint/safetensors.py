"""A safetensors reader: the header parsed and checked here, every tensor a read-only numpy
view into one memory map of the file, so loading makes no second copy of the weights (or, with
``copy=True``, into one private copy of it).

The header is checked as the format's own loader checks it (tensors laid end to end from byte 0
to the end of the file, no overlap, no gap, sizes matching shapes), so a hostile or damaged file
is a :class:`CheckpointError` naming the file and the tensor, never a numpy or JSON exception.

A file changed under a running process: a memory map shares the file's pages, so the weights are
only as stable as the file. A file *replaced* (written elsewhere, then renamed over it, as
``cbert prepare`` and most tools do) is harmless: the map keeps the old file alive. A file
rewritten *in place* changes the weights under the model, and one truncated in place makes the
next read of a page past its new end kill the process with SIGBUS (Linux, macOS; Windows refuses
to truncate a mapped file), which Python cannot turn into an exception. Two defences:
:meth:`SafetensorsFile.check_unchanged` (one ``fstat``, 1-10 us measured) turns a change between
two uses into a ``CheckpointError``, though not one during a use; ``copy=True`` reads the file
into private memory instead, immune to any later change, for one copy of the weights in each
process's RAM (a map's pages are shared between processes and reclaimable).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import weakref
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, shown
from ..files import is_json_int, open_regular

# safetensors dtype codes -> numpy; BF16 is read as uint16 and widened at load.
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
MAX_HEADER_BYTES = 100 << 20  # the format's own limit
MAX_DIMS = 32  # numpy 1.x's limit; no weight has more than a handful
# numpy refuses an array whose nonzero dims times the item size exceed a signed 64-bit size.
_MAX_ARRAY_BYTES = (1 << 63) - 1


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """json object hook: a key given twice is an error, not silently the last one."""
    d = {}
    for k, v in pairs:
        if k in d:
            raise _DuplicateKey(k)
        d[k] = v
    return d


def parse_header(raw: bytes, data_len: int, path: Path) -> tuple[dict, dict[str, dict]]:
    """(metadata, {tensor name: entry}) from a header's bytes, checked against ``data_len`` bytes of data."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a safetensors file ({why})")

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise bad(f"key {e.args[0]!r} appears twice in the header") from None
    except RecursionError:
        raise bad("header JSON is nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise bad(f"__metadata__ is a {type(metadata).__name__}, expected a JSON object")
    spans = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where} has a malformed header entry (a {type(info).__name__}, expected an "
                                  "object with dtype, shape and data_offsets)")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise CheckpointError(f"{where} has unsupported dtype {dtype!r} (cbert reads {', '.join(_DTYPES)})")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(is_json_int(d) and d >= 0 for d in shape):
            raise CheckpointError(f"{where}: shape = {shown(shape)}: expected a list of at most {MAX_DIMS} "
                                  "non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_json_int(o) and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise CheckpointError(f"{where}: data_offsets = {shown(offsets)}: expected [begin, end], two "
                                  "integers with 0 <= begin <= end")
        begin, end = offsets
        itemsize = np.dtype(_DTYPES[dtype]).itemsize
        if math.prod(max(d, 1) for d in shape) * itemsize > _MAX_ARRAY_BYTES:
            raise CheckpointError(f"{where}: shape {shape} is larger than any array can be")
        if end > data_len:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} ends at byte {end} of the data section "
                f"but the file holds only {data_len} bytes of data")
        nbytes = math.prod(shape) * itemsize
        if end - begin != nbytes:
            raise CheckpointError(f"{where}: {end - begin} bytes stored for shape {shape} {dtype} ({nbytes} needed)")
        spans.append((begin, end, name))
    # Tensors lie end to end from byte 0 to the end of the file, as the format's loader requires.
    at, last = 0, None
    for begin, end, name in sorted(spans):
        if begin < at:
            raise CheckpointError(f"{path}: tensor {name!r} (bytes {begin}..{end}) overlaps tensor {last!r} "
                                  f"(which ends at byte {at})")
        if begin > at:
            raise CheckpointError(f"{path}: tensor {name!r} starts at byte {begin}, leaving bytes {at}..{begin} "
                                  "of the data section unused (a gap the format does not allow)")
        at, last = end, name
    if at != data_len:
        raise CheckpointError(f"{path}: {data_len - at} bytes after the last tensor belong to no tensor "
                              f"(data ends at byte {at} of {data_len})")
    return metadata, header


class SafetensorsFile:
    """A read-only safetensors file: ``names()``, ``shape(name)`` and ``get(name)`` views.

    ``copy=False`` (the default) memory-maps the file: no copy, but see the module docstring for
    what a change to the file does; ``check_unchanged()`` detects one. ``copy=True`` reads the
    whole file into private memory once, so nothing done to the file later reaches the tensors.
    """

    def __init__(self, path: str | Path, copy: bool = False):
        self.path = Path(path)
        self.copy = copy
        try:
            fd = open_regular(self.path)
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: cannot open (No such file or directory)") from None
        # The descriptor stays open for check_unchanged's fstat (the map holds its own).
        self._fd = fd
        weakref.finalize(self, os.close, fd)
        st = os.fstat(fd)
        size = st.st_size
        self._stamp = (st.st_size, st.st_mtime_ns)
        if size < 8:
            raise CheckpointError(f"{self.path}: not a safetensors file ({size} bytes, too short for a header)")
        with open(fd, "rb", buffering=0, closefd=False) as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise CheckpointError(
                    f"{self.path}: not a safetensors file (header length {n} does not fit in {size} bytes)")
            if copy:
                # read(), not a copy out of a map: a file truncated meanwhile is an error here, not SIGBUS.
                buf = np.empty(size, np.uint8)
                view, got = memoryview(buf), 0
                fh.seek(0)
                while got < size and (step := fh.readinto(view[got:])):
                    got += step
                if got != size:
                    raise CheckpointError(f"{self.path}: changed while being read ({got} of {size} bytes)")
                self._buf = view.toreadonly()
            else:
                self._buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        self._data_start = 8 + n
        data_len = len(self._buf) - self._data_start  # what was mapped, should the file have shrunk meanwhile
        self.metadata, self.header = parse_header(bytes(self._buf[8:8 + n]), data_len, self.path)

    def check_unchanged(self) -> None:
        """Raise CheckpointError if the file was truncated or rewritten in place since it was opened.

        One fstat of the open file (a replaced file keeps the old one open, which is unchanged and
        fine). With ``copy=True`` a change cannot reach the tensors, so nothing is checked."""
        if self.copy:
            return
        st = os.fstat(self._fd)
        if (st.st_size, st.st_mtime_ns) != self._stamp:
            was = self._stamp[0]
            how = (f"truncated from {was} to {st.st_size} bytes" if st.st_size < was else
                   f"rewritten in place ({was} -> {st.st_size} bytes, modified since load)")
            raise CheckpointError(f"{self.path}: {how}; the memory-mapped weights are no longer the ones "
                                  "loaded: load the model again (cbert.load(..., copy_weights=True) keeps a "
                                  "private copy that no change to the file reaches)")

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """A zero-copy read-only view for F32; F16/F64/BF16 converted to float32 (one copy of that tensor)."""
        info = self.header[name]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        a = np.frombuffer(self._buf, dtype=dtype, count=(end - begin) // dtype.itemsize,
                          offset=self._data_start + begin).reshape(info["shape"])
        if info["dtype"] == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if a.dtype in (np.float16, np.float64):
            return a.astype(np.float32)
        return a
