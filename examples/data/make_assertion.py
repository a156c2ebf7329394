"""Generate a small clinical assertion-status data set: is a symptom present, negated or hypothetical
in a templated note sentence? (as the i2b2 2010 assertion task asks of real notes).

Each row is ``{"text": sentence, "text_pair": the symptom asked about, "label": status}``. A third of
the sentences also mention a second symptom with another status ("Denies fever. Reports cough."), so
the words alone do not decide the label: the status belongs to the symptom in text_pair. A few
symptoms appear only in the test split, to see how far a model carries a cue to words it has not
been trained on. Seeded: the same seed writes the same files.

    python examples/data/make_assertion.py [--seed 13] [--out examples/data/assertion]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYMPTOMS = ["chest pain", "shortness of breath", "fever", "chills", "cough", "nausea", "vomiting", "diarrhea",
            "abdominal pain", "headache", "dizziness", "palpitations", "leg swelling", "fatigue", "back pain",
            "rash", "sore throat", "night sweats", "weight loss", "confusion", "syncope", "dysuria", "hematuria",
            "blurred vision", "numbness", "weakness", "wheezing", "orthopnea", "constipation", "joint pain"]
TEST_ONLY = ["hemoptysis", "melena", "tremor", "neck stiffness", "jaw pain", "loss of appetite"]

TEMPLATES = {
    "present": ["Patient reports {s}.", "She complains of {s} for {dur}.", "He endorses {s} since {when}.",
                "Presents with {s}.", "Positive for {s}.", "Admitted with worsening {s}.",
                "Review of systems notable for {s}.", "{S} began {when} and persists.", "Continues to have {s}.",
                "Reports intermittent {s} over the last {dur}.", "Found to have {s} on exam."],
    "negated": ["Denies {s}.", "No {s}.", "Negative for {s}.", "Patient denies any {s}.", "No evidence of {s}.",
                "{S} was ruled out.", "Without {s}.", "Free of {s} since {when}.", "Has not had {s}.",
                "She reports no {s}.", "Absence of {s} noted on exam."],
    "hypothetical": ["Return to the ED if {s} develops.", "Call the clinic should {s} occur.", "Monitor for {s}.",
                     "Advised to seek care for any {s}.", "Watch for {s} after the procedure.",
                     "If {s} develops, stop the medication.", "Risk of {s} was discussed.",
                     "Instructed to report {s} if it appears.", "May experience {s} with the new dose.",
                     "Evaluate for {s} at the next visit."],
}
PREFIXES = ["", "", "67 y/o M with h/o CHF.", "Pt seen in clinic today.", "HPI:", "ROS:", "Plan:",
            "Discharge instructions:", "Follow-up visit.", "58 y/o F s/p cholecystectomy.", "Nursing note:"]
DURATIONS = ["two days", "a week", "three weeks", "several months", "24 hours"]
WHEN = ["yesterday", "last night", "this morning", "admission", "the last visit", "Monday"]
LABELS = tuple(TEMPLATES)
SIZES = {"train": 2000, "dev": 300, "test": 300}


def clause(rng: random.Random, status: str, symptom: str) -> str:
    template = rng.choice(TEMPLATES[status])
    return template.format(s=symptom, S=symptom.capitalize(), dur=rng.choice(DURATIONS), when=rng.choice(WHEN))


def row(rng: random.Random, symptoms: list[str]) -> dict:
    status = rng.choice(LABELS)
    target = rng.choice(symptoms)
    parts = [clause(rng, status, target)]
    if rng.random() < 1 / 3:  # a second symptom with another status, before or after
        other = rng.choice([s for s in SYMPTOMS if s != target])
        parts.insert(rng.randrange(2), clause(rng, rng.choice([x for x in LABELS if x != status]), other))
    prefix = rng.choice(PREFIXES)
    return {"text": " ".join([prefix, *parts]).strip(), "text_pair": target, "label": status}


def generate(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {}
    for split, n in SIZES.items():
        symptoms = SYMPTOMS + TEST_ONLY if split == "test" else SYMPTOMS
        rows = []
        while len(rows) < n:
            r = row(rng, symptoms)
            key = r["text"] + "\t" + r["text_pair"]
            if key not in seen:  # no sentence in two splits, or twice in one
                seen.add(key)
                rows.append(r)
        splits[split] = rows
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", default=str(Path(__file__).parent / "assertion"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in generate(args.seed).items():
        path = out / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path)  # whole files or none
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main()
