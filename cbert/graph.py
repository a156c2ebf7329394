"""Build the op list for a BERT encoder and its heads from a config.

Parameter names are Hugging Face's, without the ``bert.`` prefix, so a checkpoint's
tensors plug in unchanged. https://github.com/huggingface/transformers/blob/main/src/transformers/models/bert/modeling_bert.py
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import BertConfig
from .ir import Graph, Node, Op, node

# The runtime inputs of every encoder graph, as Hugging Face names them.
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")

HEAD_KINDS = ("pooler", "mlm", "nsp")


@dataclass(frozen=True)
class Heads:
    """Which heads the checkpoint has, and how its Hugging Face class names their outputs."""

    pooler: bool = False
    mlm: bool = False
    nsp: bool = False
    tied_decoder: bool = True  # no cls.predictions.decoder.weight: reuse the word embeddings
    mlm_output: str = "logits"  # "prediction_logits" for BertForPreTraining


def layer_nodes(cfg: BertConfig, i: int, x: str, bias: str, with_probs: bool) -> list[Node]:
    p = f"encoder.layer.{i}."
    a, act = cfg.num_attention_heads, cfg.activation
    eps = cfg.layer_norm_eps
    qkv_w, qkv_b = p + "attention.self.qkv.weight", p + "attention.self.qkv.bias"
    nodes = [
        # Q, K and V as one matmul against a weight concatenated at load.
        node(Op.CONCAT, [p + f"attention.self.{n}.weight" for n in ("query", "key", "value")], qkv_w, axis=0),
        node(Op.CONCAT, [p + f"attention.self.{n}.bias" for n in ("query", "key", "value")], qkv_b, axis=0),
        node(Op.LINEAR, [x, qkv_w, qkv_b], p + "qkv", activation="none"),
    ]
    if with_probs:
        nodes += [
            node(Op.ATTN_PROBS, [p + "qkv", bias], f"attentions.{i}", heads=a),
            node(Op.ATTN_APPLY, [f"attentions.{i}", p + "qkv"], p + "context", heads=a),
        ]
    else:
        nodes.append(node(Op.ATTENTION, [p + "qkv", bias], p + "context", heads=a))
    nodes += [
        node(Op.LINEAR, [p + "context", p + "attention.output.dense.weight", p + "attention.output.dense.bias"],
             p + "attn_out", activation="none"),
        node(Op.ADD_LN, [p + "attn_out", x, p + "attention.output.LayerNorm.weight",
                         p + "attention.output.LayerNorm.bias"], p + "attn_ln", eps=eps),
        node(Op.LINEAR, [p + "attn_ln", p + "intermediate.dense.weight", p + "intermediate.dense.bias"],
             p + "ffn_in", activation=act),
        node(Op.LINEAR, [p + "ffn_in", p + "output.dense.weight", p + "output.dense.bias"],
             p + "ffn_out", activation="none"),
        node(Op.ADD_LN, [p + "ffn_out", p + "attn_ln", p + "output.LayerNorm.weight", p + "output.LayerNorm.bias"],
             f"hidden_states.{i + 1}", eps=eps),
    ]
    return nodes


def mlm_head_nodes(cfg: BertConfig, hidden: str, out: str, tied: bool) -> list[Node]:
    t = "cls.predictions.transform."
    decoder = "embeddings.word_embeddings.weight" if tied else "cls.predictions.decoder.weight"
    return [
        node(Op.LINEAR, [hidden, t + "dense.weight", t + "dense.bias"], "mlm.transform", activation=cfg.activation),
        node(Op.LAYERNORM, ["mlm.transform", t + "LayerNorm.weight", t + "LayerNorm.bias"], "mlm.ln",
             eps=cfg.layer_norm_eps),
        node(Op.LINEAR, ["mlm.ln", decoder, "cls.predictions.bias"], out, activation="none"),
    ]


def build_bert(
    cfg: BertConfig,
    heads: Heads = Heads(),
    output_hidden_states: bool = False,
    output_attentions: bool = False,
) -> Graph:
    """The whole forward: embeddings, encoder layers, then the heads, as one op list."""
    emb = "embeddings."
    tables = [emb + "word_embeddings.weight", "input_ids", emb + "position_embeddings.weight", "position_ids"]
    if cfg.type_vocab_size > 0:
        tables += [emb + "token_type_embeddings.weight", "token_type_ids"]
    nodes = [
        node(Op.EMBED, [emb + "LayerNorm.weight", emb + "LayerNorm.bias", *tables], "hidden_states.0",
             eps=cfg.layer_norm_eps),
        node(Op.MASK_BIAS, ["attention_mask"], "mask_bias"),
    ]
    x = "hidden_states.0"
    for i in range(cfg.num_hidden_layers):
        nodes += layer_nodes(cfg, i, x, "mask_bias", output_attentions)
        x = f"hidden_states.{i + 1}"
    outputs = {"last_hidden_state": x}
    if heads.pooler or heads.nsp:
        nodes += [
            node(Op.FIRST_TOKEN, [x], "cls_token"),
            node(Op.LINEAR, ["cls_token", "pooler.dense.weight", "pooler.dense.bias"], "pooler_output",
                 activation="tanh"),
        ]
        if heads.pooler:
            outputs["pooler_output"] = "pooler_output"
    if heads.mlm:
        nodes += mlm_head_nodes(cfg, x, heads.mlm_output, heads.tied_decoder)
        outputs[heads.mlm_output] = heads.mlm_output
    if heads.nsp:
        nodes.append(node(Op.LINEAR, ["pooler_output", "cls.seq_relationship.weight", "cls.seq_relationship.bias"],
                          "seq_relationship_logits", activation="none"))
        outputs["seq_relationship_logits"] = "seq_relationship_logits"
    if output_hidden_states:
        outputs.update({f"hidden_states.{i}": f"hidden_states.{i}" for i in range(cfg.num_hidden_layers + 1)})
    if output_attentions:
        outputs.update({f"attentions.{i}": f"attentions.{i}" for i in range(cfg.num_hidden_layers)})
    inputs = tuple(i for i in INPUTS if any(i in n.inputs for n in nodes))
    return Graph(tuple(nodes), inputs, outputs)


def expected_shapes(cfg: BertConfig, heads: Heads) -> dict[str, tuple[int, ...]]:
    """Every tensor the checkpoint must hold for ``heads``, with its shape."""
    H, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    s = {
        "embeddings.word_embeddings.weight": (V, H),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    if cfg.type_vocab_size > 0:
        s["embeddings.token_type_embeddings.weight"] = (cfg.type_vocab_size, H)
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for n in ("query", "key", "value"):
            s[p + f"attention.self.{n}.weight"] = (H, H)
            s[p + f"attention.self.{n}.bias"] = (H,)
        s[p + "attention.output.dense.weight"] = (H, H)
        s[p + "attention.output.dense.bias"] = (H,)
        s[p + "attention.output.LayerNorm.weight"] = (H,)
        s[p + "attention.output.LayerNorm.bias"] = (H,)
        s[p + "intermediate.dense.weight"] = (F, H)
        s[p + "intermediate.dense.bias"] = (F,)
        s[p + "output.dense.weight"] = (H, F)
        s[p + "output.dense.bias"] = (H,)
        s[p + "output.LayerNorm.weight"] = (H,)
        s[p + "output.LayerNorm.bias"] = (H,)
    s.update(head_shapes(cfg, heads))
    return s


def head_shapes(cfg: BertConfig, heads: Heads) -> dict[str, tuple[int, ...]]:
    H, V = cfg.hidden_size, cfg.vocab_size
    s: dict[str, tuple[int, ...]] = {}
    if heads.pooler or heads.nsp:
        s["pooler.dense.weight"] = (H, H)
        s["pooler.dense.bias"] = (H,)
    if heads.mlm:
        t = "cls.predictions.transform."
        s[t + "dense.weight"] = (H, H)
        s[t + "dense.bias"] = (H,)
        s[t + "LayerNorm.weight"] = (H,)
        s[t + "LayerNorm.bias"] = (H,)
        s["cls.predictions.bias"] = (V,)
        if not heads.tied_decoder:
            s["cls.predictions.decoder.weight"] = (V, H)
    if heads.nsp:
        s["cls.seq_relationship.weight"] = (2, H)
        s["cls.seq_relationship.bias"] = (2,)
    return s
