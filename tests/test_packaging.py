"""The wheel a user installs carries the WGSL shaders, and the wgpu backend runs from it."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

REPO = pathlib.Path(__file__).parent.parent


def test_wheel_ships_the_shaders_and_runs_them(tmp_path, checkpoints):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("cbert-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split("/")[-1] for n in names if n.startswith("cbert/shaders/") and n.endswith(".wgsl")}
    assert shipped == {p.name for p in (REPO / "shaders").glob("*.wgsl")}
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    folder, _ = checkpoints("odd13")
    code = ("import cbert, cbert.backends.wgpu.device as d, numpy as np;"
            f"assert str(d.shader_dir()).startswith({str(site)!r}), d.shader_dir();"
            f"m = cbert.load({folder!r}, backend='wgpu');"
            "print(m.forward([[5, 6, 7]]).last_hidden_state.shape)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(1, 3, 52)"
