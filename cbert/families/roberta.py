"""RoBERTa, XLM-RoBERTa and CamemBERT: BERT's encoder under BERT's layer names, with positions
that start after the padding index and their own LM and classification heads.

https://github.com/huggingface/transformers/blob/main/src/transformers/models/roberta/modeling_roberta.py
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import Family, MaskedLMHead, SeqClassifier, bert, classes, register

if TYPE_CHECKING:
    from ..config import ModelConfig


def position_ids(input_ids: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Real tokens count from padding_idx + 1; padding keeps padding_idx (create_position_ids_from_input_ids)."""
    real = (input_ids != cfg.pad_token_id).astype(np.int64)
    return np.cumsum(real, axis=1) * real + cfg.pad_token_id


def max_seq_len(cfg: ModelConfig) -> int:
    """Positions up to padding_idx are never used, so two fewer (padding_idx 1) than max_position_embeddings."""
    return cfg.max_position_embeddings - cfg.pad_token_id - 1


FAMILY = register(Family(
    name="roberta",
    model_types=("roberta", "xlm-roberta", "camembert"),
    # Roberta* first: a file whose config names no class is described as one.
    architectures=classes("Roberta", "XLMRoberta", "Camembert"),
    prefix="roberta.",
    layer=bert.FAMILY.layer,
    graph=bert.graph,  # BERT's encoder; the differences are names, positions and heads
    pooler="pooler.dense",
    # RobertaLMHead applies the exact GELU whatever hidden_act says.
    mlm=MaskedLMHead(dense="lm_head.dense", layer_norm="lm_head.layer_norm", decoder_weight="lm_head.decoder.weight",
                     bias="lm_head.bias", decoder_bias="lm_head.decoder.bias", activation="gelu"),
    # RobertaClassificationHead: first token -> dense -> tanh -> out_proj (the pooler is not used).
    seq_cls=SeqClassifier(from_pooler=False, hidden=(("classifier.dense", "tanh"),), out="classifier.out_proj"),
    position_ids=position_ids,
    max_seq_len=max_seq_len,
))
