"""The adapter, the device and what is created on it once: shader modules and pipelines.

:func:`open_gpu` opens a device on the best adapter. :data:`SHARED` holds the one that
backends share unless they are given their own (``WgpuBackend(gpu=open_gpu())``): opening
a device is slow, and pipelines compiled for one model serve the next. Every buffer,
pipeline and bind group is created through :class:`Gpu`, which counts them (so a forward
can prove it created none) and guards its caches and counters with a lock, so any thread
may compile or run.

Pipelines live as long as the process. WebGPU's pipeline cache (wgpu's ``PipelineCache``, kept
on disk between processes) is not reachable from wgpu-py 0.32: its ``wgpu.h`` declares only the
``WGPUNativeFeature_PipelineCache`` flag and a registry counter, no function to create or read
one, and wgpu-py's own test of it is skipped as "Not implemented in wgpu-native". The driver
keeps its compiled shaders on disk anyway (Mesa, lavapipe included: ``~/.cache/mesa_shader_cache``).
What a one-shot run on lavapipe spends instead (profiled, 2 busy cores): about 60% in cffi
parsing wgpu-py's C types on their first use, then opening the device; making the 8
pipelines themselves, about 1.3 s.

On a headless Linux machine without ``XDG_RUNTIME_DIR`` (containers, CI), the Wayland
client library that Mesa's Vulkan drivers load prints "error: XDG_RUNTIME_DIR is invalid
or not set in the environment." while adapters are enumerated. It is harmless; cbert
leaves the environment alone, and the application may set ``XDG_RUNTIME_DIR`` to silence it.
"""

from __future__ import annotations

import importlib.resources
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import wgpu

from ...errors import BackendUnavailable, warn
from ..numpy.lowering import ERF_ALPHA, ERF_BETA, ERF_CLAMP

# Native backends first; GL is the fallback wgpu offers when Vulkan is missing.
_BACKEND_RANK = {"Vulkan": 0, "Metal": 0, "D3D12": 0, "OpenGL": 2, "OpenGLES": 2}
_TYPE_RANK = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "CPU": 3}
_SOFTWARE = ("llvmpipe", "lavapipe", "swiftshader", "softpipe", "warp")


def shader_dir():
    """Inside a wheel the shaders ship as cbert/shaders; from a checkout they are <repo>/shaders."""
    packaged = importlib.resources.files("cbert") / "shaders"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[3] / "shaders"


def _adapter_info(adapter) -> dict:
    info = adapter.info
    name = info.get("device") or info.get("description") or "unknown adapter"
    kind = info.get("adapter_type", "Unknown")
    software = kind == "CPU" or any(s in name.lower() for s in _SOFTWARE)
    return {"adapter": name, "backend": info.get("backend_type", "Unknown"), "type": kind,
            "driver": info.get("description", ""), "software": software,
            "f16": "shader-f16" in adapter.features, "subgroups": "subgroup" in adapter.features}


def _pick_adapter():
    adapters = wgpu.gpu.enumerate_adapters_sync()
    if not adapters:
        raise BackendUnavailable("backend='wgpu': no WebGPU adapter found (install a Vulkan, Metal or DX12 driver)")

    def rank(a):
        i = a.info
        return (_BACKEND_RANK.get(i.get("backend_type"), 1), _TYPE_RANK.get(i.get("adapter_type"), 2))

    return min(adapters, key=rank)


@dataclass
class Gpu:
    """One device and what was made on it: counters, shader modules and pipelines (cached)."""

    adapter: object
    device: object
    info: dict
    limits: dict
    buffers_created: int = 0
    pipelines_created: int = 0
    modules_created: int = 0
    bind_groups_created: int = 0
    warned_software: bool = False
    _modules: dict = field(default_factory=dict)
    _pipelines: dict = field(default_factory=dict)
    # Guards the caches and counters: models compile and run from any thread.
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def warn_if_software(self, info: dict | None = None) -> None:
        """Once per device: a software adapter is slower than the numpy reference."""
        info = self.info if info is None else info
        with self._lock:
            if not info["software"] or self.warned_software:
                return
            self.warned_software = True
        warn(f"backend='wgpu' is running on a CPU (software) adapter: {info['adapter']} "
             f"({info['backend']}); expect it to be slower than backend='numpy'", RuntimeWarning)

    @property
    def max_binding(self) -> int:
        return int(self.limits["max-storage-buffer-binding-size"])

    @property
    def storage_align(self) -> int:
        return int(self.limits["min-storage-buffer-offset-alignment"])

    @property
    def uniform_align(self) -> int:
        return int(self.limits["min-uniform-buffer-offset-alignment"])

    def buffer(self, size: int, usage, label: str = ""):
        if size > self.limits["max-buffer-size"]:
            raise ValueError(f"backend='wgpu': {label} needs a {size}-byte buffer, more than this adapter's "
                             f"maxBufferSize ({self.limits['max-buffer-size']}); use a smaller batch or seq")
        with self._lock:
            self.buffers_created += 1
        return self.device.create_buffer(size=max(16, -(-size // 16) * 16), usage=usage, label=label)

    def upload(self, array: np.ndarray, label: str):
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        buf = self.buffer(data.nbytes, wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST, label)
        # Copies move whole 4-byte words: an odd count of f16 values gets a zero pad.
        self.device.queue.write_buffer(buf, 0, np.pad(data, (0, -data.nbytes % 4)))
        return buf

    def bind_group(self, layout, entries):
        with self._lock:
            self.bind_groups_created += 1
        return self.device.create_bind_group(layout=layout, entries=entries)

    def pipeline(self, file: str, entry: str, dtype: str, consts: tuple, overrides: tuple, bindings: tuple):
        """The compute pipeline for (file, entry, storage dtype, const and override values), cached."""
        key = (file, entry, dtype, consts, overrides)
        with self._lock:
            if key not in self._pipelines:
                self._pipelines[key] = self._create_pipeline(file, entry, dtype, consts, overrides, bindings)
            return self._pipelines[key]

    def _module(self, file: str, dtype: str, consts: tuple):
        key = (file, dtype, consts)
        if key not in self._modules:
            folder = shader_dir()
            source = _prelude(dtype, consts) + (folder / "common.wgsl").read_text() + (folder / file).read_text()
            self._modules[key] = self.device.create_shader_module(code=source, label=file)
            self.modules_created += 1
        return self._modules[key]

    def _create_pipeline(self, file, entry, dtype, consts, overrides, bindings):
        self.pipelines_created += 1
        layout_entries = []
        for binding, kind in bindings:
            buf = {"type": {"uniform": wgpu.BufferBindingType.uniform, "read": wgpu.BufferBindingType.read_only_storage,
                            "write": wgpu.BufferBindingType.storage}[kind]}
            layout_entries.append({"binding": binding, "visibility": wgpu.ShaderStage.COMPUTE, "buffer": buf})
        bgl = self.device.create_bind_group_layout(entries=layout_entries)
        layout = self.device.create_pipeline_layout(bind_group_layouts=[bgl])
        stage = {"module": self._module(file, dtype, consts), "entry_point": entry}
        if overrides:
            stage["constants"] = dict(overrides)
        return self.device.create_compute_pipeline(layout=layout, compute=stage, label=f"{file}:{entry}"), bgl


def _f32(v: float) -> str:
    return f"{np.float32(v).item()!r}"


def _prelude(dtype: str, consts: tuple) -> str:
    """The storage type, the shared erf coefficients and the kernel's shape constants."""
    lines = ["enable f16;", "alias st = f16;"] if dtype == "float16" else ["alias st = f32;"]
    lines.append(f"const ERF_CLAMP: f32 = {_f32(ERF_CLAMP)};")
    lines.append(f"const ERF_A = array<f32, 7>({', '.join(_f32(c) for c in ERF_ALPHA)});")
    lines.append(f"const ERF_B = array<f32, 5>({', '.join(_f32(c) for c in ERF_BETA)});")
    for name, value in consts:
        lines.append(f"const {name}: f32 = {_f32(value)};" if isinstance(value, float) else
                     f"const {name}: u32 = {int(value)}u;")
    return "\n".join(lines) + "\n"


def open_gpu() -> Gpu:
    """A new device on the best adapter, with the adapter's own limits."""
    adapter = _pick_adapter()
    info = _adapter_info(adapter)
    wanted = ("max-storage-buffer-binding-size", "max-buffer-size", "max-compute-workgroup-storage-size",
              "max-compute-invocations-per-workgroup")
    features = ["shader-f16"] if info["f16"] else []
    device = adapter.request_device_sync(required_features=features,
                                         required_limits={k: adapter.limits[k] for k in wanted})
    return Gpu(adapter, device, info, dict(device.limits))


class SharedDevice:
    """The device that every backend not given one shares, opened on first use.

    Two threads asking first get the same device (creation is under a lock); a process that
    never runs wgpu never opens one.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._gpu: Gpu | None = None

    def get(self) -> Gpu:
        if self._gpu is None:
            with self._lock:
                if self._gpu is None:
                    self._gpu = open_gpu()
        return self._gpu


SHARED = SharedDevice()
