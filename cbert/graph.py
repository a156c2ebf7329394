"""Build the op list for an encoder family and its heads from a config.

One function per family (BERT, RoBERTa, DistilBERT, ALBERT) shares the encoder pieces;
heads are nodes of the same list. Parameter names are Hugging Face's, without the base
model's prefix (``bert.``, ``roberta.``, ``distilbert.``, ``albert.``), so a checkpoint's
tensors plug in unchanged. Every parameter is declared with its shape as the graph is
built, so the loader checks a checkpoint against exactly what the graph reads.
https://github.com/huggingface/transformers/tree/main/src/transformers/models (modeling_*.py)
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig
from .ir import Graph, Op, node

# The runtime inputs of every encoder graph, as Hugging Face names them.
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass(frozen=True)
class Heads:
    """Which heads a graph computes, and how the Hugging Face class names their outputs."""

    pooler: bool = False
    mlm: bool = False
    nsp: bool = False
    seq_cls: int = 0  # number of labels of a sequence classifier; 0: none
    token_cls: int = 0  # number of labels of a token classifier; 0: none
    qa: bool = False
    tied_decoder: bool = True  # no decoder weight of its own: reuse the word embeddings
    mlm_output: str = "logits"  # "prediction_logits" for BertForPreTraining


# Per family: the parameter names of layer i's pieces, relative to its prefix.
LAYER_ROLES = {
    "bert": ("encoder.layer.{i}.", dict(
        q="attention.self.query", k="attention.self.key", v="attention.self.value", o="attention.output.dense",
        ln1="attention.output.LayerNorm", ffn_in="intermediate.dense", ffn_out="output.dense",
        ln2="output.LayerNorm")),
    "distilbert": ("transformer.layer.{i}.", dict(
        q="attention.q_lin", k="attention.k_lin", v="attention.v_lin", o="attention.out_lin", ln1="sa_layer_norm",
        ffn_in="ffn.lin1", ffn_out="ffn.lin2", ln2="output_layer_norm")),
    "albert": ("encoder.albert_layer_groups.{g}.albert_layers.{j}.", dict(
        q="attention.query", k="attention.key", v="attention.value", o="attention.dense", ln1="attention.LayerNorm",
        ffn_in="ffn", ffn_out="ffn_output", ln2="full_layer_layer_norm")),
}
LAYER_ROLES["roberta"] = LAYER_ROLES["bert"]

# Per family: (pooler linear, MLM transform, MLM LayerNorm, MLM decoder, MLM bias, its preferred twin).
MLM_NAMES = {
    "bert": ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm",
             "cls.predictions.decoder.weight", "cls.predictions.bias"),
    "roberta": ("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder.weight", "lm_head.bias"),
    "distilbert": ("vocab_transform", "vocab_layer_norm", "vocab_projector.weight", "vocab_projector.bias"),
    "albert": ("predictions.dense", "predictions.LayerNorm", "predictions.decoder.weight", "predictions.bias"),
}
POOLER = {"bert": "pooler.dense", "roberta": "pooler.dense", "albert": "pooler"}


class Builder:
    """Collects nodes and the shape of every parameter they read."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._made: set[str] = set()

    def param(self, name: str, *shape: int) -> str:
        if self.shapes.setdefault(name, shape) != shape:
            raise ValueError(f"parameter {name} declared with shapes {self.shapes[name]} and {shape}")
        return name

    def add(self, op: Op, inputs, output: str, **attrs) -> str:
        # A node already made (a CONCAT of weights shared by ALBERT's layers) is made once.
        if output not in self._made:
            self.nodes.append(node(op, inputs, output, **attrs))
            self._made.add(output)
        return output

    def linear(self, x: str, prefix: str, n_out: int, n_in: int, out: str, activation: str = "none") -> str:
        w = self.param(prefix + ".weight", n_out, n_in)
        b = self.param(prefix + ".bias", n_out)
        return self.add(Op.LINEAR, [x, w, b], out, activation=activation)

    def layernorm(self, x: str, prefix: str, size: int, out: str, eps: float, residual: str | None = None) -> str:
        w, b = self.param(prefix + ".weight", size), self.param(prefix + ".bias", size)
        if residual is None:
            return self.add(Op.LAYERNORM, [x, w, b], out, eps=eps)
        return self.add(Op.ADD_LN, [x, residual, w, b], out, eps=eps)


def encoder_layer(b: Builder, cfg: ModelConfig, p: str, roles: dict, x: str, bias: str, tag: str,
                  probs_out: str | None, out: str) -> str:
    """One transformer layer (post-LayerNorm, as every family here): attention then FFN."""
    H, F, eps = cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps
    # Q, K and V as one matmul against a weight concatenated at load.
    qkv_w = b.add(Op.CONCAT, [b.param(p + roles[r] + ".weight", H, H) for r in "qkv"], p + "qkv.weight", axis=0)
    qkv_b = b.add(Op.CONCAT, [b.param(p + roles[r] + ".bias", H) for r in "qkv"], p + "qkv.bias", axis=0)
    qkv = b.add(Op.LINEAR, [x, qkv_w, qkv_b], tag + "qkv", activation="none")
    heads = cfg.num_attention_heads
    if probs_out:
        b.add(Op.ATTN_PROBS, [qkv, bias], probs_out, heads=heads)
        ctx = b.add(Op.ATTN_APPLY, [probs_out, qkv], tag + "context", heads=heads)
    else:
        ctx = b.add(Op.ATTENTION, [qkv, bias], tag + "context", heads=heads)
    attn = b.linear(ctx, p + roles["o"], H, H, tag + "attn_out")
    attn = b.layernorm(attn, p + roles["ln1"], H, tag + "attn_ln", eps, residual=x)
    ffn = b.linear(attn, p + roles["ffn_in"], F, H, tag + "ffn_in", cfg.activation)
    ffn = b.linear(ffn, p + roles["ffn_out"], H, F, tag + "ffn_out")
    return b.layernorm(ffn, p + roles["ln2"], H, out, eps, residual=attn)


def embeddings(b: Builder, cfg: ModelConfig) -> str:
    E = cfg.embedding_size
    emb = "embeddings."
    tables = [b.param(emb + "word_embeddings.weight", cfg.vocab_size, E), "input_ids",
              b.param(emb + "position_embeddings.weight", cfg.max_position_embeddings, E), "position_ids"]
    if cfg.type_vocab_size > 0:
        tables += [b.param(emb + "token_type_embeddings.weight", cfg.type_vocab_size, E), "token_type_ids"]
    ln = [b.param(emb + "LayerNorm.weight", E), b.param(emb + "LayerNorm.bias", E)]
    if cfg.family != "albert":
        return b.add(Op.EMBED, [*ln, *tables], "hidden_states.0", eps=cfg.layer_norm_eps)
    # ALBERT: factorized embeddings of size E, projected to the hidden size.
    x = b.add(Op.EMBED, [*ln, *tables], "embedded", eps=cfg.layer_norm_eps)
    return b.linear(x, "encoder.embedding_hidden_mapping_in", cfg.hidden_size, E, "hidden_states.0")


def encoder(b: Builder, cfg: ModelConfig, output_attentions: bool) -> str:
    x = embeddings(b, cfg)
    bias = b.add(Op.MASK_BIAS, ["attention_mask"], "mask_bias")
    template, roles = LAYER_ROLES[cfg.family]
    n = 0  # layers run so far: ALBERT runs inner_group_num layers per step, and each one's output is kept
    for i in range(cfg.num_hidden_layers):
        if cfg.family == "albert":
            # One group's weights serve several layers (AlbertTransformer.forward in modeling_albert.py).
            group = int(i / (cfg.num_hidden_layers / cfg.num_hidden_groups))
            prefixes = [template.format(g=group, j=j) for j in range(cfg.inner_group_num)]
        else:
            prefixes = [template.format(i=i)]
        for p in prefixes:
            probs = f"attentions.{n}" if output_attentions else None
            x = encoder_layer(b, cfg, p, roles, x, bias, f"L{n}.", probs, f"hidden_states.{n + 1}")
            n += 1
    return x


def pooler(b: Builder, cfg: ModelConfig, x: str) -> str:
    first = b.add(Op.FIRST_TOKEN, [x], "cls_token")
    H = cfg.hidden_size
    return b.linear(first, POOLER[cfg.family], H, H, "pooler_output", "tanh")


def mlm_head(b: Builder, cfg: ModelConfig, x: str, out: str, tied: bool) -> str:
    H, E, V = cfg.hidden_size, cfg.embedding_size, cfg.vocab_size
    dense, ln, decoder, bias = MLM_NAMES[cfg.family]
    # RoBERTa's LM head applies the exact GELU whatever hidden_act says (RobertaLMHead.forward).
    act = "gelu" if cfg.family == "roberta" else cfg.activation
    h = b.linear(x, dense, E, H, "mlm.transform", act)
    h = b.layernorm(h, ln, E, "mlm.ln", cfg.layer_norm_eps)
    w = b.param("embeddings.word_embeddings.weight" if tied else decoder, V, E)
    return b.add(Op.LINEAR, [h, w, b.param(bias, V)], out, activation="none")


def seq_classifier(b: Builder, cfg: ModelConfig, x: str, labels: int) -> str:
    H = cfg.hidden_size
    if cfg.family == "distilbert":  # first token -> pre_classifier -> ReLU -> classifier
        h = b.linear(b.add(Op.FIRST_TOKEN, [x], "cls_token"), "pre_classifier", H, H, "cls.pre", "relu")
        return b.linear(h, "classifier", labels, H, "logits")
    if cfg.family == "roberta":  # first token -> dense -> tanh -> out_proj
        h = b.linear(b.add(Op.FIRST_TOKEN, [x], "cls_token"), "classifier.dense", H, H, "cls.dense", "tanh")
        return b.linear(h, "classifier.out_proj", labels, H, "logits")
    return b.linear(pooler(b, cfg, x), "classifier", labels, H, "logits")  # BERT, ALBERT: pooled output


def build(cfg: ModelConfig, heads: Heads = Heads(), output_hidden_states: bool = False,
          output_attentions: bool = False) -> Graph:
    """The whole forward of one family: embeddings, encoder layers, then the heads, as one op list."""
    b = Builder()
    x = encoder(b, cfg, output_attentions)
    outputs = {"last_hidden_state": x}
    H = cfg.hidden_size
    if heads.pooler or heads.nsp:
        outputs["pooler_output"] = pooler(b, cfg, x)
    if heads.mlm:
        outputs[heads.mlm_output] = mlm_head(b, cfg, x, heads.mlm_output, heads.tied_decoder)
    if heads.nsp:
        outputs["seq_relationship_logits"] = b.linear("pooler_output", "cls.seq_relationship", 2, H,
                                                      "seq_relationship_logits")
    if heads.seq_cls:
        outputs["logits"] = seq_classifier(b, cfg, x, heads.seq_cls)
    if heads.token_cls:
        outputs["logits"] = b.linear(x, "classifier", heads.token_cls, H, "logits")
    if heads.qa:
        # [B, S, 2]; the model splits it into start_logits and end_logits on the host.
        outputs["qa_logits"] = b.linear(x, "qa_outputs", 2, H, "qa_logits")
    if output_hidden_states:
        outputs.update({n.output: n.output for n in b.nodes if n.output.startswith("hidden_states.")})
    if output_attentions:
        outputs.update({n.output: n.output for n in b.nodes if n.op is Op.ATTN_PROBS})
    inputs = tuple(i for i in INPUTS if any(i in n.inputs for n in b.nodes))
    return Graph(tuple(b.nodes), inputs, outputs, dict(b.shapes))


def build_bert(cfg: ModelConfig, heads: Heads = Heads(), output_hidden_states: bool = False,
               output_attentions: bool = False) -> Graph:
    """``build`` for a BERT config (kept for callers that name the family)."""
    return build(cfg, heads, output_hidden_states, output_attentions)


def expected_shapes(cfg: ModelConfig, heads: Heads) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint must hold for ``heads``, with its shape."""
    return dict(build(cfg, heads).param_shapes)
