"""`cbert devices`: the fields issue 6 asks for, from each backend's probe and wgpu's adapter list."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest


def devices() -> str:
    r = subprocess.run([sys.executable, "-m", "cbert.cli", "devices"], capture_output=True, text=True,
                       env=os.environ.copy(), timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def out():
    return devices()


def test_mlx_device_and_blas(out):
    if importlib.util.find_spec("mlx") is None:
        assert "mlx: not available" in out
        return
    block = out.split("mlx: available\n")[1].split("\nwgpu")[0]
    assert re.search(r"^  device: (cpu|gpu .+)$", block, re.M)
    assert re.search(r"^  blas: \S", block, re.M)


def test_every_wgpu_adapter_with_backend_type_f16_subgroups(out):
    if importlib.util.find_spec("wgpu") is None:
        assert "wgpu: not available" in out
        return
    import wgpu

    adapters = wgpu.gpu.enumerate_adapters_sync()
    listed = re.findall(r"^  (.+): backend (Vulkan|Metal|D3D12|OpenGL|\S+), type (GPU|CPU)[^,]*, f16 (True|False), "
                        r"subgroups (True|False)$", out.split("wgpu adapters:\n")[1], re.M)
    assert len(listed) == len(adapters) >= 1
    assert {a.info["device"] for a in adapters} == {name for name, *_ in listed}
    assert re.search(r'^backend="auto" picks: (numpy|mlx|wgpu)$', out, re.M)
