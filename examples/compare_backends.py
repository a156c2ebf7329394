"""Run one batch on every backend and dtype installed here and compare each with the numpy
reference, by the metric `cbert parity` uses."""

import cbert
from cbert.backends import BACKENDS, backend_class, probe
from cbert.cli import default_model_path
from cbert.tools.parity import compare

TEXTS = ["Pt w/ COPD exacerbation, started on prednisone 40mg PO daily.", "No acute distress.", "BP 132/84, HR 88."]

path = default_model_path()
reference = cbert.load(path, backend="numpy")
batch = reference.tokenizer(TEXTS)
want = reference.forward(**batch).last_hidden_state
for name in BACKENDS:
    if not probe(name).get("available"):
        print(f"{name:6s} not available here")
        continue
    for dtype in backend_class(name).dtypes:
        got = cbert.load(path, backend=name, dtype=dtype).forward(**batch).last_hidden_state
        m = compare("last_hidden_state", got, want, batch["attention_mask"], half=dtype != "float32")
        print(f"{name:6s} {dtype:8s} max abs error {m['max_abs']:.2e}  min token cosine {m['cosine']:.6f}  "
              f"{'ok' if m['ok'] else 'FAIL: ' + m['why']}")
