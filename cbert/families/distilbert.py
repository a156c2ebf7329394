"""DistilBERT (medicalai/ClinicalBERT among them): BERT's encoder under its own names, without
token types or pooler, and a config.json that spells the shared fields its own way.

https://github.com/huggingface/transformers/blob/main/src/transformers/models/distilbert/modeling_distilbert.py
"""

from __future__ import annotations

from . import Family, LayerNames, MaskedLMHead, SeqClassifier, bert, classes, register

FAMILY = register(Family(
    name="distilbert",
    model_types=("distilbert",),
    architectures=classes("DistilBert"),
    prefix="distilbert.",
    layer=LayerNames(prefix="transformer.layer.{i}.", query="attention.q_lin", key="attention.k_lin",
                     value="attention.v_lin", attention_output="attention.out_lin", attention_norm="sa_layer_norm",
                     ffn_in="ffn.lin1", ffn_out="ffn.lin2", output_norm="output_layer_norm"),
    graph=bert.graph,  # BERT's encoder; without token types the embeddings skip that table
    pooler=None,
    mlm=MaskedLMHead(dense="vocab_transform", layer_norm="vocab_layer_norm", decoder_weight="vocab_projector.weight",
                     bias="vocab_projector.bias"),
    # first token -> pre_classifier -> ReLU -> classifier
    seq_cls=SeqClassifier(from_pooler=False, hidden=(("pre_classifier", "relu"),), out="classifier"),
    config_renames={"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                    "hidden_dim": "intermediate_size", "activation": "hidden_act"},
    config_defaults={"hidden_act": "gelu"},
    # No token types; LayerNorm eps is fixed in modeling_distilbert.py, whatever config.json says.
    config_fixed={"type_vocab_size": 0, "layer_norm_eps": 1e-12},
    dropout_keys=("dropout", "attention_dropout", "seq_classif_dropout"),
    dropout_defaults=(0.1, 0.1, 0.2),
))
