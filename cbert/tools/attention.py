"""``cbert attention``: what one layer's head (or the mean of its heads) attends to, as a heatmap
labelled with the tokens on both axes, from any backend's ``output_attentions``."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..extras import need


def attention_matrix(model, text: str, layer: int, head: int | str) -> tuple[list[str], np.ndarray, str]:
    """(tokens, [seq, seq] attention probabilities: rows attend to columns, a title)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("TEXT is empty: nothing to attend to")
    batch = model.tokenizer([text])
    attentions = model.forward(**batch, output_attentions=True).attentions
    n_layers, n_heads = len(attentions), attentions[0].shape[1]
    if not -n_layers <= layer < n_layers:
        raise InputError(f"--layer {layer}: the model has {n_layers} layers (0..{n_layers - 1}, or -1 for the last)")
    layer_index = layer % n_layers
    a = attentions[layer_index][0]  # [heads, seq, seq]
    if head == "mean":
        matrix, which = a.mean(0), f"mean of {n_heads} heads"
    else:
        try:
            h = int(head)
        except (TypeError, ValueError):
            raise InputError(f"--head {head!r}: a head number (0..{n_heads - 1}) or 'mean'") from None
        if not 0 <= h < n_heads:
            raise InputError(f"--head {h}: layer {layer_index} has {n_heads} heads (0..{n_heads - 1}) or 'mean'")
        matrix, which = a[h], f"head {h}"
    tokens = model.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    return tokens, np.asarray(matrix, np.float32), f"layer {layer_index}, {which}"


def save_heatmap(tokens: list[str], matrix: np.ndarray, title: str, path: str) -> None:
    matplotlib = need("matplotlib", "cbert attention")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tokens)
    side = min(4 + 0.28 * n, 40)  # readable labels up to a few hundred tokens
    font = 9 if n <= 40 else max(3, 9 - (n - 40) // 20)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(float(matrix.max()), 1e-9), aspect="equal")
    ax.set_xticks(range(n), tokens, rotation=90, fontsize=font)
    ax.set_yticks(range(n), tokens, fontsize=font)
    ax.set_xlabel("attended-to token (key)")
    ax.set_ylabel("attending token (query)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention probability")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
