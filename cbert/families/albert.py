"""ALBERT: factorized embeddings projected to the hidden size, and groups of layers whose
weights are shared across the depth.

https://github.com/huggingface/transformers/blob/main/src/transformers/models/albert/modeling_albert.py
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Family, LayerNames, MaskedLMHead, SeqClassifier, classes, register
from .layers import Builder, embeddings, encoder_layer, finish, mask_bias

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..heads import Heads
    from ..ir import Graph


def graph(fam: Family, cfg: ModelConfig, heads: Heads) -> Graph:
    """Embeddings of embedding_size, projected; each of num_hidden_layers steps runs one group's
    inner_group_num layers, and every layer's output is a hidden state."""
    b = Builder()
    x = embeddings(b, cfg, out="embedded")
    x = b.linear(x, "encoder.embedding_hidden_mapping_in", cfg.hidden_size, cfg.embedding_size, "hidden_states.0")
    bias = mask_bias(b)
    n = 0  # layers run so far
    for i in range(cfg.num_hidden_layers):
        # One group's weights serve several steps (AlbertTransformer.forward).
        group = int(i / (cfg.num_hidden_layers / cfg.num_hidden_groups))
        for j in range(cfg.inner_group_num):
            x = encoder_layer(b, cfg, fam.layer, fam.layer.prefix.format(g=group, j=j), x, bias, n)
            n += 1
    return finish(b, fam, cfg, heads, x)


def config_problem(cfg: ModelConfig) -> tuple[str, str] | None:
    if cfg.num_hidden_layers % cfg.num_hidden_groups:
        return "num_hidden_groups", f"does not divide num_hidden_layers = {cfg.num_hidden_layers}"
    return None


FAMILY = register(Family(
    name="albert",
    model_types=("albert",),
    architectures=classes("Albert"),
    prefix="albert.",
    layer=LayerNames(prefix="encoder.albert_layer_groups.{g}.albert_layers.{j}.", query="attention.query",
                     key="attention.key", value="attention.value", attention_output="attention.dense",
                     attention_norm="attention.LayerNorm", ffn_in="ffn", ffn_out="ffn_output",
                     output_norm="full_layer_layer_norm"),
    graph=graph,
    pooler="pooler",
    mlm=MaskedLMHead(dense="predictions.dense", layer_norm="predictions.LayerNorm",
                     decoder_weight="predictions.decoder.weight", bias="predictions.bias",
                     decoder_bias="predictions.decoder.bias"),
    seq_cls=SeqClassifier(from_pooler=True, hidden=(), out="classifier"),
    config_defaults={"hidden_act": "gelu_new", "embedding_size": 128},  # AlbertConfig's defaults
    config_problem=config_problem,
    dropout_keys=("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"),
    dropout_defaults=(0.0, 0.0, 0.1),  # AlbertConfig's
))
