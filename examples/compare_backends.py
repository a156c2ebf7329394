"""Run one batch on every backend installed here and compare each with the numpy reference."""

import numpy as np

import cbert
from cbert.backends import BACKENDS, probe
from cbert.cli import default_model_path

TEXTS = ["Pt w/ COPD exacerbation, started on prednisone 40mg PO daily.", "No acute distress.", "BP 132/84, HR 88."]

path = default_model_path()
reference = cbert.load(path, backend="numpy")
batch = reference.tokenizer(TEXTS)
want = reference.forward(**batch).last_hidden_state
mask = batch["attention_mask"].astype(bool)
for name in BACKENDS:
    if not probe(name).get("available"):
        print(f"{name:6s} not available here")
        continue
    for dtype in ("float32", "float16"):
        try:
            model = cbert.load(path, backend=name, dtype=dtype)
        except ValueError as e:  # this backend does not run this dtype
            print(f"{name:6s} {dtype:8s} {e}")
            continue
        got = model.forward(**batch).last_hidden_state
        err = np.abs(got - want).max()
        cos = ((got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1))[mask].min()
        print(f"{name:6s} {dtype:8s} max abs error {err:.2e}  min token cosine {cos:.6f}")
