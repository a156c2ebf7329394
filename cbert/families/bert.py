"""BERT (and every checkpoint of its layout: Bio_ClinicalBERT, BioBERT, MiniLM ...).

https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/modeling_bert.py
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
    """Embeddings, num_hidden_layers post-LayerNorm layers, then the heads."""
    b = Builder()
    x = embeddings(b, cfg)
    bias = mask_bias(b)
    for i in range(cfg.num_hidden_layers):
        x = encoder_layer(b, cfg, fam.layer, fam.layer.prefix.format(i=i), x, bias, i)
    return finish(b, fam, cfg, heads, x)


FAMILY = register(Family(
    name="bert",
    model_types=("bert",),
    architectures={**classes("Bert"), "BertForPreTraining": ("mlm", "nsp")},
    prefix="bert.",
    layer=LayerNames(prefix="encoder.layer.{i}.", query="attention.self.query", key="attention.self.key",
                     value="attention.self.value", attention_output="attention.output.dense",
                     attention_norm="attention.output.LayerNorm", ffn_in="intermediate.dense",
                     ffn_out="output.dense", output_norm="output.LayerNorm"),
    graph=graph,
    pooler="pooler.dense",
    mlm=MaskedLMHead(dense="cls.predictions.transform.dense", layer_norm="cls.predictions.transform.LayerNorm",
                     decoder_weight="cls.predictions.decoder.weight", bias="cls.predictions.bias",
                     decoder_bias="cls.predictions.decoder.bias"),
    nsp="cls.seq_relationship",
    seq_cls=SeqClassifier(from_pooler=True, hidden=(), out="classifier"),  # BertForSequenceClassification
))
