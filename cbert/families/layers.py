"""The pieces every family's graph is made of: a Builder, embeddings, one encoder layer, the heads.

Parameter names are Hugging Face's without the family's prefix (``bert.`` ...), so a
checkpoint's tensors plug in unchanged. Every parameter is declared with its shape as the
graph is built, so the loader checks a checkpoint against exactly what the graph reads.
https://github.com/huggingface/transformers/tree/main/src/transformers/models (modeling_*.py)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..heads import MLM_LOGITS, NSP_LOGITS, POOLER_OUTPUT, QA_LOGITS, SEQ_CLS_LOGITS, TOKEN_CLS_LOGITS, Heads
from ..ir import Graph, Op, node

if TYPE_CHECKING:
    from ..config import ModelConfig
    from . import Family, LayerNames

# The runtime inputs of every encoder graph, as Hugging Face names them.
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


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
        # A node already made (ALBERT's shared weight CONCATs, the first token read by two heads) is made once.
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

    def graph(self, outputs: dict[str, str]) -> Graph:
        inputs = tuple(i for i in INPUTS if any(i in n.inputs for n in self.nodes))
        return Graph(tuple(self.nodes), inputs, outputs, dict(self.shapes))


def embeddings(b: Builder, cfg: ModelConfig, out: str = "hidden_states.0") -> str:
    """Word + position (+ token type) embeddings of size embedding_size, then LayerNorm."""
    E = cfg.embedding_size
    emb = "embeddings."
    tables = [b.param(WORD_EMBEDDINGS, cfg.vocab_size, E), "input_ids",
              b.param(emb + "position_embeddings.weight", cfg.max_position_embeddings, E), "position_ids"]
    if cfg.type_vocab_size > 0:
        tables += [b.param(emb + "token_type_embeddings.weight", cfg.type_vocab_size, E), "token_type_ids"]
    ln = [b.param(emb + "LayerNorm.weight", E), b.param(emb + "LayerNorm.bias", E)]
    return b.add(Op.EMBED, [*ln, *tables], out, eps=cfg.layer_norm_eps)


def mask_bias(b: Builder) -> str:
    return b.add(Op.MASK_BIAS, ["attention_mask"], "mask_bias")


def encoder_layer(b: Builder, cfg: ModelConfig, names: LayerNames, p: str, x: str, bias: str, n: int) -> str:
    """Layer run ``n`` (post-LayerNorm, as every family here) with the tensors under prefix ``p``:
    attention then FFN; its output is ``hidden_states.{n + 1}``."""
    H, F, eps = cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps
    tag = f"L{n}."
    # Q, K and V as one matmul against a weight concatenated at load.
    qkv_names = (names.query, names.key, names.value)
    qkv_w = b.add(Op.CONCAT, [b.param(p + r + ".weight", H, H) for r in qkv_names], p + "qkv.weight", axis=0)
    qkv_b = b.add(Op.CONCAT, [b.param(p + r + ".bias", H) for r in qkv_names], p + "qkv.bias", axis=0)
    qkv = b.add(Op.LINEAR, [x, qkv_w, qkv_b], tag + "qkv", activation="none")
    # Fused; output_attentions splits it afterwards (cbert.ir.expose_attentions).
    ctx = b.add(Op.ATTENTION, [qkv, bias], tag + "context", heads=cfg.num_attention_heads)
    attn = b.linear(ctx, p + names.attention_output, H, H, tag + "attn_out")
    attn = b.layernorm(attn, p + names.attention_norm, H, tag + "attn_ln", eps, residual=x)
    ffn = b.linear(attn, p + names.ffn_in, F, H, tag + "ffn_in", cfg.activation)
    ffn = b.linear(ffn, p + names.ffn_out, H, F, tag + "ffn_out")
    return b.layernorm(ffn, p + names.output_norm, H, f"hidden_states.{n + 1}", eps, residual=attn)


# -- heads, as nodes of the same list ------------------------------------------------------

def first_token(b: Builder, x: str) -> str:
    return b.add(Op.FIRST_TOKEN, [x], "cls_token")


def pooler(b: Builder, fam: Family, cfg: ModelConfig, x: str) -> str:
    """tanh(W h[:, 0] + b)."""
    if fam.pooler is None:
        raise ValueError(f"a {fam.name} model has no pooler")
    H = cfg.hidden_size
    return b.linear(first_token(b, x), fam.pooler, H, H, POOLER_OUTPUT, "tanh")


def masked_lm(b: Builder, fam: Family, cfg: ModelConfig, x: str, tied: bool) -> str:
    H, E, V = cfg.hidden_size, cfg.embedding_size, cfg.vocab_size
    m = fam.mlm
    if m is None:
        raise ValueError(f"a {fam.name} model has no masked-LM head")
    h = b.linear(x, m.dense, E, H, "mlm.transform", m.activation or cfg.activation)
    h = b.layernorm(h, m.layer_norm, E, "mlm.ln", cfg.layer_norm_eps)
    w = b.param(WORD_EMBEDDINGS if tied else m.decoder_weight, V, E)
    return b.add(Op.LINEAR, [h, w, b.param(m.bias, V)], MLM_LOGITS, activation="none")


def seq_classifier(b: Builder, fam: Family, cfg: ModelConfig, x: str, labels: int) -> str:
    H, layout = cfg.hidden_size, fam.seq_cls
    h = pooler(b, fam, cfg, x) if layout.from_pooler else first_token(b, x)
    for i, (name, activation) in enumerate(layout.hidden):
        h = b.linear(h, name, H, H, f"seq_cls.{i}", activation)
    return b.linear(h, layout.out, labels, H, SEQ_CLS_LOGITS)


def finish(b: Builder, fam: Family, cfg: ModelConfig, heads: Heads, x: str) -> Graph:
    """Add ``heads`` over the last hidden state ``x``; the graph outputs them and every hidden state."""
    H = cfg.hidden_size
    if heads.pooler or heads.nsp:
        pooler(b, fam, cfg, x)
    if heads.mlm:
        masked_lm(b, fam, cfg, x, heads.tied_decoder)
    if heads.nsp:
        b.linear(POOLER_OUTPUT, fam.nsp, 2, H, NSP_LOGITS)
    if heads.seq_cls:
        seq_classifier(b, fam, cfg, x, heads.seq_cls)
    if heads.token_cls:
        b.linear(x, fam.token_cls, heads.token_cls, H, TOKEN_CLS_LOGITS)
    if heads.qa:
        b.linear(x, fam.qa, 2, H, QA_LOGITS)
    hidden = {n.output: n.output for n in b.nodes if n.output.startswith("hidden_states.")}
    return b.graph({"last_hidden_state": x, **heads.outputs(), **hidden})
