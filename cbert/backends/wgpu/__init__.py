"""The WebGPU backend: WGSL kernels (in shaders/) run through wgpu-py."""

from .backend import WgpuBackend

__all__ = ["WgpuBackend"]
