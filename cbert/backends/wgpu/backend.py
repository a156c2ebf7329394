"""The WebGPU backend class: device choice, dtype check, weight uploads and statistics."""

from __future__ import annotations

import threading

import numpy as np

from ...ir import Graph
from .device import SHARED, Gpu
from .executor import Concat, WgpuExecutable


class WgpuBackend:
    """WGSL kernels through wgpu-py on the best adapter (Vulkan, Metal or DX12 before GL).

    The device is the process's shared one (:data:`cbert.backends.wgpu.device.SHARED`)
    unless ``gpu`` gives another (:func:`cbert.backends.wgpu.device.open_gpu`).

    Thread safety: one compiled graph may be called from any number of threads, and each
    call gives the serial result. Each executable holds one lock around a forward's use of
    its per-shape buffers (write the inputs and uniforms, submit, map, read back); packing
    the inputs and converting the results run outside it. A lock, not per-thread buffers:
    the queue runs one submit at a time anyway, and per-thread buffers would multiply the
    activation memory by the number of threads for no throughput (lavapipe, 4 layers x 256
    wide, 1 x 16 tokens: 0.7 forwards/s from one thread, 0.6/s from 16 threads sharing the
    lock, 0.6/s from 16 threads each with its own buffers). Weight uploads and the device's
    caches and counters have locks of their own. :meth:`stats` is the most recent forward
    of any thread.
    """

    name = "wgpu"
    dtypes = ("float32", "float16")
    bucketed_shapes = True  # each new input shape gets its dispatch list: callers pad to the sequence buckets

    def __init__(self, dtype: str = "float32", device: str | None = None, gpu: Gpu | None = None):
        if device not in (None, "gpu"):
            raise ValueError(f"backend='wgpu' picks its adapter itself (see `cbert devices`); got device={device!r}")
        if dtype not in self.dtypes:
            raise ValueError(f"backend='wgpu' runs float32 or float16; got dtype={dtype!r}")
        self.gpu = gpu if gpu is not None else SHARED.get()
        info = self.gpu.info
        if dtype == "float16" and not info["f16"]:
            raise ValueError(f"backend='wgpu' dtype='float16' needs the shader-f16 feature, which the adapter "
                             f"{info['adapter']} ({info['backend']}) does not have; use dtype='float32'")
        self.dtype = dtype
        self._uploads: dict[tuple, object] = {}
        self._uploads_lock = threading.Lock()
        self._stats: dict = {}
        self.gpu.warn_if_software()

    @classmethod
    def probe(cls) -> dict:
        """Says, without warning: probing is not using (backend="auto" probes and may pick numpy)."""
        info = SHARED.get().info
        found = {"available": True, "accelerated": not info["software"], "adapter": info["adapter"],
                 "backend": info["backend"], "type": info["type"], "driver": info["driver"], "f16": info["f16"],
                 "subgroups": info["subgroups"]}
        if info["software"]:
            found["warning"] = "a CPU (software) adapter: slower than backend='numpy'; no GPU was found"
        return found

    def describe(self) -> str:
        i = self.gpu.info
        soft = ", software" if i["software"] else ""
        return f"wgpu ({i['adapter']}, {i['backend']}, {i['type']}{soft}, {self.dtype})"

    def compile(self, graph: Graph, params: dict) -> WgpuExecutable:
        return WgpuExecutable(self, graph, params)

    def stats(self) -> dict:
        """What the most recent forward did: submits, dispatches, creations, bytes moved."""
        if not self._stats:
            raise RuntimeError("backend='wgpu' has run no forward yet")
        return dict(self._stats)

    def record(self, stats: dict) -> None:
        self._stats = stats

    def param_buffer(self, name: str, value):
        """The device copy of a parameter, uploaded once per backend: every graph of a model shares it.

        Matrices are stored in the compute dtype; vectors (biases, LayerNorm) stay f32, they are tiny.
        """
        key = _identity(name, value)
        with self._uploads_lock:
            if key not in self._uploads:
                array = value.materialise() if isinstance(value, Concat) else np.asarray(value)
                dtype = np.float16 if self.dtype == "float16" and array.ndim >= 2 else np.float32
                self._uploads[key] = self.gpu.upload(array.astype(dtype, copy=False), name)
            return self._uploads[key]


def _identity(name: str, value) -> tuple:
    if isinstance(value, Concat):
        return ("concat", value.axis, *(_identity(name, a) for a in value.arrays))
    a = np.asarray(value)
    return (name, a.__array_interface__["data"][0], a.shape, a.strides)
