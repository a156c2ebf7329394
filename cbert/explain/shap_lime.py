"""SHAP (the Partition explainer over a Text masker) and LIME (LimeTextExplainer), through the real
``shap`` and ``lime`` libraries, fed by ``predict_proba``: a classifier's label probabilities for
any texts, long notes windowed and aggregated as ``classify`` does. Nothing of either library is
rewritten here: this module hands them the prediction function and a tokenizer, and maps the
values they return onto the note's tokens by character offsets.
"""

from __future__ import annotations

import numpy as np

from ..extras import need
from ..tasks.classify import class_probabilities


def predict_proba(model, texts, aggregation: str = "mean", stride: int | None = None,
                  batch_size: int = 32) -> np.ndarray:
    """[n texts, labels]: what shap, lime and scikit-learn call a classifier's ``predict_proba``."""
    return class_probabilities(model, texts, aggregation, stride, batch_size)


class ShapTokenizer:
    """cbert's tokenizer in the shape shap's Text masker reads: ``tok(s, return_offsets_mapping=True)``
    -> ``{"input_ids", "offset_mapping"}`` with the special tokens, plus the mask and separator tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.mask_token, self.mask_token_id = tokenizer.mask_token, tokenizer.mask_token_id
        sep = [t for t in ("[SEP]", "</s>") if tokenizer.token_to_id(t) is not None]
        self.sep_token = sep[0] if sep else None
        self.sep_token_id = tokenizer.token_to_id(sep[0]) if sep else None

    def __call__(self, text: str, return_offsets_mapping: bool = False, **_):
        enc = self.tokenizer.encode([text], check_length=False)[0]
        out = {"input_ids": list(enc.ids)}
        if return_offsets_mapping:
            out["offset_mapping"] = [tuple(o) for o in enc.offsets]
        return out


def _classifier(subject):
    """The subject's predict_proba over texts (run_method has checked the task is classify)."""
    t = subject.target
    return lambda texts: predict_proba(subject.model, list(texts), t.aggregation, subject.stride,
                                       subject.batch_size)


def shap_values(subject, options) -> tuple[np.ndarray, dict]:
    shap = need("shap", "the shap method")
    f = _classifier(subject)
    label = subject.target.label
    masker = shap.maskers.Text(ShapTokenizer(subject.model.tokenizer))
    explainer = shap.explainers.PartitionExplainer(f, masker, output_names=subject.target.labels)
    result = explainer([subject.text], max_evals=options.shap_evals, batch_size=subject.batch_size,
                       silent=not subject.progress)
    values = np.asarray(result.values[0])[:, label]  # one value per token of the encoding, specials included
    if len(values) != len(subject.model.tokenizer.encode([subject.text], check_length=False)[0].ids):
        raise RuntimeError(f"shap returned {len(values)} values for a text of a different token count")
    base = float(np.asarray(result.base_values[0])[label])
    return values[subject.encoding_index].astype(np.float64), {
        "explainer": "shap.explainers.PartitionExplainer", "masker": "shap.maskers.Text (the model's tokenizer)",
        "max_evals": options.shap_evals, "base_value": base,
        "base_plus_values": base + float(values.sum()), "scalar": "probability of the target"}


def lime_weights(subject, options) -> tuple[np.ndarray, dict]:
    lime_text = need("lime.lime_text", "the lime method")
    f = _classifier(subject)
    label = subject.target.label
    explainer = lime_text.LimeTextExplainer(class_names=subject.target.labels, bow=False, random_state=options.seed,
                                            mask_string=subject.model.tokenizer.mask_token)
    words = explainer.explain_instance(subject.text, f, labels=(label,), num_features=10 ** 6,
                                       num_samples=options.lime_samples)
    indexed = words.domain_mapper.indexed_string
    scores = np.zeros(len(subject.tokens))
    for feature, weight in words.as_map()[label]:
        start = int(indexed.string_position(feature)[0])
        end = start + len(indexed.word(feature))
        hit = [i for i, (s, e) in enumerate(subject.offsets) if s < end and e > start]
        if hit:
            scores[hit] += weight / len(hit)
    return scores, {"explainer": "lime.lime_text.LimeTextExplainer (bow=False)", "num_samples": options.lime_samples,
                    "intercept": float(words.intercept[label]), "r2": float(words.score),
                    "scalar": "probability of the target"}
