"""The inspection subcommands: info (a checkpoint) and devices (this machine)."""

from __future__ import annotations


def cmd_info(args) -> int:
    from ..checkpoint import load_checkpoint
    from ..config import PRESETS, recognise
    from ..tasks.embed import EmbeddingDefaults
    from ..tokenizer import Tokenizer

    ckpt = load_checkpoint(args.model)
    c = ckpt.config
    tok = Tokenizer.from_folder(ckpt.path, c.max_seq_len, c.pad_token_id)
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
        ("heads", ", ".join(_describe_heads(ckpt)) or "none (encoder only)"),
        ("embedding", EmbeddingDefaults.of_folder(ckpt.path).describe()),
        ("tokenizer", tok.casing),
        ("looks like", "; ".join(PRESETS[k]["description"] for k in known) if known else "no known preset"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


def _describe_heads(ckpt) -> list[str]:
    """Every head the weights file holds; one the class's forward does not output says how to reach it."""
    held, out = ckpt.loaded, ckpt.heads

    def labels(n: int) -> str:
        names = ckpt.config.labels(n)
        shown = ", ".join(names[:8]) + (f" and {n - 8} more" if n > 8 else "")
        return f"{n} label{'s' if n != 1 else ''}: {shown}"

    described = []
    if held.pooler:
        described.append("pooler")
    if held.mlm:
        decoder = "decoder tied to word embeddings" if held.tied_decoder else "own decoder weight"
        described.append(f"mlm ({decoder})" if out.mlm else f"mlm ({decoder}; model.mlm_logits only, not in forward)")
    if held.nsp:
        described.append("nsp")
    if held.seq_cls:
        described.append(f"sequence classification ({labels(held.seq_cls)})")
    if held.token_cls:
        described.append(f"token classification ({labels(held.token_cls)})")
    if held.qa:
        described.append("question answering (start/end logits)")
    return described


def cmd_devices(args) -> int:
    from ..backends import BACKENDS, auto_backend, probe
    from ..errors import BackendUnavailable

    for name in BACKENDS:
        p = probe(name)
        state = "available" if p.get("available") else "not available"
        print(f"{name}: {state}")
        for k, v in p.items():
            if k != "available":
                print(f"  {k}: {v}")
        if name == "mlx" and p.get("available"):
            _print_gemm_plans()
    _print_wgpu_adapters()
    print(f'backend="auto" picks: {auto_backend()}')
    for dtype in ("float16", "bfloat16"):
        try:
            print(f'backend="auto" dtype="{dtype}" picks: {auto_backend(dtype)}')
        except BackendUnavailable as e:
            print(f'backend="auto" dtype="{dtype}": {e}')
    return 0


def _print_gemm_plans() -> None:
    """Where the MLX CPU GEMM plans (`cbert tune`) are cached, and which exist."""
    from ..backends.mlx.plan import cache_dir, list_plans

    plans = list_plans()
    print(f"  gemm plan cache: {cache_dir()} ({len(plans)} plan{'s' * (len(plans) != 1)}; "
          "`cbert tune --model DIR` measures one)")
    for line in plans:
        print(f"    {line}")


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



def add_inspect_parsers(sub) -> None:
    i = sub.add_parser("info", help="describe a checkpoint: family, shapes, parameters, heads, tokenizer casing")
    i.add_argument("model", metavar="DIR")
    i.set_defaults(func=cmd_info)

    d = sub.add_parser("devices", help="which backends and devices this machine has")
    d.set_defaults(func=cmd_devices)
