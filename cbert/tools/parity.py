"""``cbert parity``: every backend and dtype against the numpy reference, and the reference
against Hugging Face ``transformers``, on this machine, for one checkpoint.

For each output the forward gives (hidden states, pooler, head logits) a row per comparison:
the smallest cosine over tokens (or rows), the max abs error (and scaled by the reference's
magnitude), and for logits the top-1 agreement. float32 must agree to a scaled max abs error
of 1e-4; float16/bfloat16 to a cosine of 0.999. A top-1 disagreement counts only when the
reference's own margin between the two classes is larger than the dtype's noise (1e-4 scaled
for float32, 1e-2 for half precision): a near-tie may flip either way.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from ..backends import BACKENDS, backend_class, probe
from ..extras import need

FP32_MAX_ERROR = 1e-4  # scaled: max|a - b| / max(1, max|ref|)
HALF_MIN_COSINE = 0.999
HALF_TIE = 1e-2  # a float16/bfloat16 top-1 flip within this (scaled) margin of the reference is a near-tie
TEXTS = ["Patient denies chest pain and fever.",
         "History of CHF and COPD, admitted with cough; given lasix 40 mg IV bid.",
         "No acute distress."]
# Outputs whose rows are class scores, where top-1 agreement is the question.
LOGITS = ("logits", "prediction_logits", "seq_relationship_logits", "start_logits", "end_logits")


@dataclass
class Row:
    output: str
    candidate: str  # e.g. "mlx float16"
    reference: str  # "numpy" or "transformers"
    cosine: float
    max_abs: float
    scaled: float
    top1: float | None
    ok: bool
    why: str = ""


def scaled_max_abs_error(got, ref) -> float:
    """max|got - ref| / max(1, max|ref|): float32's metric, an absolute error for values near 1."""
    a, b = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape {list(a.shape)} != reference {list(b.shape)}")
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


def min_cosine(got, ref) -> float:
    """The smallest cosine over the last axis (per token or row): half precision's metric."""
    return _smallest_cosine(got, ref)


def _smallest_cosine(got, ref) -> float:  # compare() has a parameter named min_cosine
    a, b = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    den = np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    return float(((a * b).sum(-1) / den).min())


def compare(output: str, got: np.ndarray, ref: np.ndarray, mask: np.ndarray | None, half: bool,
            max_error: float = FP32_MAX_ERROR, min_cosine: float = HALF_MIN_COSINE) -> dict:
    """The metrics of one output; per-token outputs are compared on real (unpadded) tokens."""
    a, b = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if a.shape != b.shape:
        return dict(cosine=float("nan"), max_abs=float("inf"), scaled=float("inf"), top1=None, ok=False,
                    why=f"shape {list(a.shape)} != reference {list(b.shape)}")
    if mask is not None and a.ndim >= 2 and a.shape[:2] == mask.shape:
        keep = mask.astype(bool)
        a, b = a[keep], b[keep]
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    cosine = _smallest_cosine(a, b)
    max_abs = float(np.abs(a - b).max())
    scaled = scaled_max_abs_error(a, b)
    top1, why = None, []
    if output in LOGITS and b.shape[-1] > 1:
        ga, gb = a.argmax(-1), b.argmax(-1)
        top1 = float((ga == gb).mean())
        rows = np.flatnonzero(ga != gb)
        # a flip is real when the reference prefers its class by more than the dtype's noise
        margin = b[rows, gb[rows]] - b[rows, ga[rows]]
        real = int((margin > (HALF_TIE if half else max_error) * max(1.0, float(np.abs(b).max()))).sum())
        if real:
            why.append(f"{real} top-1 disagreement(s) beyond near-ties")
    if not np.isfinite(a).all():
        why.append("NaN/inf")
    if half and cosine < min_cosine:
        why.append(f"cosine {cosine:.6f} < {min_cosine}")
    if not half and scaled > max_error:
        why.append(f"scaled max abs error {scaled:.2e} > {max_error:g}")
    return dict(cosine=cosine, max_abs=max_abs, scaled=scaled, top1=top1, ok=not why, why="; ".join(why))


def _transformers_outputs(folder, architecture: str, inputs: dict) -> dict[str, np.ndarray]:
    torch = need("torch", "--reference transformers")
    transformers = need("transformers", "--reference transformers")
    cls = getattr(transformers, architecture, None) or transformers.AutoModel
    model = cls.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()}, return_dict=True, output_hidden_states=True)
    found = {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}
    found.setdefault("last_hidden_state", out.hidden_states[-1].numpy())  # *For* classes return only the heads
    return found


def plan(backends: list[str] | None, dtypes: list[str]) -> list[tuple[str, str]]:
    """(backend, dtype) pairs to compare with the numpy reference: the asked backends (default:
    every importable one) in each asked dtype it supports (numpy float32 is the reference itself);
    naming a backend that is not installed raises BackendUnavailable."""
    names = backends or [b for b in BACKENDS if probe(b).get("available")]
    pairs = []
    for name in names:
        cls = backend_class(name)  # unknown -> ValueError, not installed -> BackendUnavailable
        runs = [d for d in dtypes if d in cls.dtypes]
        if backends and not runs:
            raise ValueError(f"--backends {name} runs dtype {', '.join(cls.dtypes)}, none of --dtypes "
                             f"{', '.join(dtypes)}")
        pairs += [(name, d) for d in runs if (name, d) != ("numpy", "float32")]
    return pairs


def check_tolerances(max_error: float, min_cosine: float) -> None:
    """A NaN or out-of-range tolerance would pass or fail everything; refuse it."""
    if not (np.isfinite(max_error) and max_error >= 0):
        raise ValueError(f"--max-error {max_error}: expected a number >= 0")
    if not (np.isfinite(min_cosine) and -1 <= min_cosine <= 1):
        raise ValueError(f"--min-cosine {min_cosine}: expected a number in [-1, 1]")


def run_parity(path, backends: list[str] | None = None, dtypes: tuple[str, ...] = ("float32", "float16"),
               reference: str = "auto", max_error: float = FP32_MAX_ERROR, min_cosine: float = HALF_MIN_COSINE,
               progress=None, notes: list[str] | None = None) -> list[Row]:
    """Every comparison as a Row; what was not checked (and why) is appended to ``notes``."""
    from ..model import load

    for d in dtypes:
        if d not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"unknown dtype {d!r}; choose float32, float16 or bfloat16")
    if reference not in ("auto", "transformers", "none"):
        raise ValueError(f"--reference {reference!r}; choose transformers, none or auto")
    check_tolerances(max_error, min_cosine)
    pairs = plan(backends, list(dtypes))
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    use_hf = reference == "transformers" or (reference == "auto" and not missing)
    if not pairs and not use_hf:
        raise ValueError("nothing to compare: " + (
            "--reference none and no backend/dtype other than the numpy float32 reference" if reference == "none"
            else f"{' and '.join(missing)} not installed and no backend/dtype other than the numpy float32 "
                 "reference"))
    if reference == "auto" and missing and notes is not None:
        notes.append(f"numpy was not checked against transformers: {' and '.join(missing)} not installed "
                     f"(pip install transformers, with a CPU torch)")
    ref_model = load(path, backend="numpy")
    inputs = ref_model.tokenizer(TEXTS, truncation=True)
    mask = inputs["attention_mask"]
    ref = ref_model.forward(**inputs)
    rows: list[Row] = []

    def add(name: str, out: dict, against: dict, ref_name: str, half: bool) -> None:
        for k, r in against.items():
            if k not in out:
                continue
            m = compare(k, out[k], r, mask if np.asarray(r).ndim >= 2 else None, half, max_error, min_cosine)
            rows.append(Row(k, name, ref_name, **m))

    for i, (name, dtype) in enumerate(pairs):
        if progress:
            progress(i, len(pairs), f"{name} {dtype}")
        out = load(path, backend=name, dtype=dtype).forward(**inputs)
        add(f"{name} {dtype}", out, ref, "numpy", dtype != "float32")
    if progress:
        progress(len(pairs), len(pairs), "done")
    if use_hf:
        hf = _transformers_outputs(ref_model.checkpoint.path, ref_model.checkpoint.architecture, inputs)
        add("numpy float32", ref, {k: v for k, v in hf.items() if k in ref}, "transformers", False)
    return rows


def format_table(rows: list[Row]) -> str:
    lines = []
    for output in dict.fromkeys(r.output for r in rows):
        lines.append(f"\n{output}")
        head = f"  {'backend':<16} {'vs':<13} {'min cosine':>11} {'max abs err':>12} {'scaled':>9} {'top-1':>7}  result"
        lines += [head, "  " + "-" * (len(head) - 2)]
        for r in (r for r in rows if r.output == output):
            top1 = "-" if r.top1 is None else f"{r.top1:.3f}"
            verdict = "ok" if r.ok else f"FAIL: {r.why}"
            lines.append(f"  {r.candidate:<16} {r.reference:<13} {r.cosine:11.7f} {r.max_abs:12.3e} "
                         f"{r.scaled:9.2e} {top1:>7}  {verdict}")
    return "\n".join(lines)
