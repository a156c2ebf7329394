"""Optional extras the tools need (torch, huggingface_hub, matplotlib, shap, lime, ...), imported on demand.

A missing one is a :class:`MissingDependency` (a ValueError, so the CLI prints one line and
exits 2) that says which command installs it.
"""

from __future__ import annotations

import importlib

# Plain `pip install torch` pulls a multi-GB CUDA build on Linux; any CPU build reads .bin files.
TORCH_HINT = ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
              "(any CPU build of torch works)")
INSTALL = {
    "torch": TORCH_HINT,
    "huggingface_hub": 'pip install "cbert[hub]"',
    "matplotlib": 'pip install "cbert[plot]"',
    "transformers": 'pip install transformers (with a CPU torch: ' + TORCH_HINT + ")",
    "lancedb": 'pip install "cbert[lance]"',
    "onnxruntime": "pip install onnxruntime onnx",
    # cbert explain's optional methods and its --png (Playwright drives the system's Chromium)
    "shap": 'pip install "cbert[explain]"',
    "lime": 'pip install "cbert[explain]"',
    "networkx": 'pip install "cbert[explain]"',
    "playwright": 'pip install "cbert[explain]"',
}


class MissingDependency(ValueError):
    """An optional package a tool needs is not installed; the message says how to install it."""


def need(module: str, what: str):
    """Import ``module`` or raise MissingDependency naming ``what`` needs it and how to install it."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{what} needs {top}, which is not installed ({e}); install it with: "
                                f"{INSTALL.get(top, 'pip install ' + top)}") from None
