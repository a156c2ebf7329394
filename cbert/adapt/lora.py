"""LoRA training: rank-r adapters as nodes of the training graph, the base frozen, saved as PEFT does.

Each adapted linear ``W`` gets ``lora_A`` [r, K] (kaiming-uniform, as PEFT initializes it) and
``lora_B`` [N, r] (zeros), and a LORA node after its LINEAR adds ``scale * (x A^T) B^T`` (cbert.ir),
``scale = lora_alpha / r``. Only the adapters and the task's new head train (PEFT's
``modules_to_save``): a backend's gradient executable is asked for those alone (``trainable``), so
no gradient of a base weight is made and AdamW keeps state for the adapters only. The run saves
PEFT's folder (``adapter_config.json``, ``adapter_model.safetensors`` under PEFT's tensor names):
``peft.PeftModel.from_pretrained(base, OUT)`` and ``cbert.load(BASE, adapter=OUT)`` both run it.
``write_merged`` folds an adapter into a plain checkpoint folder (``cbert merge-adapter``).

https://github.com/huggingface/peft/blob/main/src/peft/tuners/lora/layer.py
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..checkpoint import load_checkpoint
from ..checkpoint.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    HEAD_CONFIG,
    LORA_SUFFIXES,
    PEFT_PREFIX,
    linear_weights,
)
from ..checkpoint.safetensors import SafetensorsFile
from ..errors import InputError
from ..families import build_graph, family_of
from ..files import read_bytes, read_json, staged_folder
from ..heads import Heads
from ..ir import Graph, Node, Op, node

# PEFT's task_type for the head a task trains (PEFT has none for masked LM).
PEFT_TASK_TYPES = {"seq-cls": "SEQ_CLS", "token-cls": "TOKEN_CLS", "qa": "QUESTION_ANS", "mlm": None}
DEFAULT_ALPHA = 8.0  # LoraConfig's lora_alpha


@dataclass(frozen=True)
class LoraSettings:
    """``cbert train --lora R --lora-alpha A --lora-targets ... --lora-modules-to-save ...``: PEFT's r,
    lora_alpha, target_modules and modules_to_save. ``targets`` None: the family's query and value
    projections (PEFT's default for BERT). ``save``: modules of the base trained whole beside the
    task's new head (which always is, as PEFT adds it for SEQ_CLS), e.g. ``("pooler",)``."""

    r: int
    alpha: float = DEFAULT_ALPHA
    targets: tuple[str, ...] | None = None
    save: tuple[str, ...] = ()

    @classmethod
    def of(cls, value) -> LoraSettings:
        """From fit's ``lora=``: a rank, or LoraSettings."""
        s = value if isinstance(value, LoraSettings) else cls(value)
        if isinstance(s.r, bool) or not isinstance(s.r, (int, np.integer)) or s.r < 1:
            raise InputError(f"lora={s.r!r}: expected a positive rank")
        if isinstance(s.alpha, bool) or not isinstance(s.alpha, (int, float)) or not math.isfinite(s.alpha) \
                or s.alpha <= 0:
            raise InputError(f"lora_alpha={s.alpha!r}: expected a positive number")
        if s.targets is not None and (isinstance(s.targets, str) or not s.targets
                                      or not all(isinstance(t, str) and t for t in s.targets)):
            raise InputError(f"lora_targets={s.targets!r}: expected module names (query,value,...)")
        if isinstance(s.save, str) or not all(isinstance(t, str) and t for t in s.save):
            raise InputError(f"lora_modules_to_save={s.save!r}: expected module names (pooler,...)")
        return s

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.r

    def as_dict(self) -> dict:
        return {"r": int(self.r), "alpha": float(self.alpha), "targets": list(self.targets or ()),
                "modules_to_save": list(self.save)}


@dataclass(frozen=True)
class LoraPlan:
    """The adapters of one run: which weights, their A/B parameter names, and what trains whole."""

    settings: LoraSettings
    adapted: dict[str, tuple[str, str]]  # base weight (graph name) -> (lora_A name, lora_B name)
    hf_names: dict[str, str]  # graph parameter name -> Hugging Face name in the trained class
    saved_whole: tuple[str, ...]  # graph parameters trained and saved whole (the new head)

    @property
    def trainable(self) -> tuple[str, ...]:
        return tuple(n for pair in self.adapted.values() for n in pair) + self.saved_whole

    def graph(self, graph: Graph) -> Graph:
        """``graph`` with a LORA node after every adapted LINEAR (see :func:`with_lora`)."""
        return with_lora(graph, self.adapted, self.settings.r, self.settings.scale)

    def init_params(self, graph: Graph, seed: int) -> dict[str, np.ndarray]:
        """A ~ U(-1/sqrt(K), 1/sqrt(K)) (kaiming_uniform_ with a = sqrt(5), PEFT's default), B = 0."""
        rng = np.random.default_rng([seed, 0x10AA])
        out = {}
        for weight, (a, b) in self.adapted.items():
            n, k = graph.param_shapes[weight]
            bound = 1.0 / math.sqrt(k)
            out[a] = rng.uniform(-bound, bound, (self.settings.r, k)).astype(np.float32)
            out[b] = np.zeros((n, self.settings.r), np.float32)
        return out


def plan_lora(settings: LoraSettings, cfg, graph: Graph, heads: Heads, initialized: Sequence[str]) -> LoraPlan:
    """The adapters ``settings`` names in ``graph`` (a task's graph over ``cfg``). A target matches a
    linear as PEFT matches target_modules: the module's whole name or its last dotted parts. The task's
    head, any parameter the base lacked (``initialized``) and the modules ``settings.save`` names (matched
    as PEFT matches modules_to_save: a module's whole name or its last dotted parts, every parameter
    under it) train whole, as PEFT's modules_to_save."""
    fam = family_of(cfg)
    base = set(build_graph(cfg, Heads(pooler=fam.pooler is not None)).params)
    hf_names = {p: (fam.prefix + p if p in base else p) for p in graph.params}
    for t in settings.save:
        if not any(_under(hf_names[p], t) for p in graph.params):
            tops = sorted({p.split(".", 1)[0] for p in graph.params})
            raise InputError(f"lora_modules_to_save: {t!r} names no module of this {fam.name} model; its "
                             f"top modules are {', '.join(tops)}")
    # A classifier's head is new and trains whole; a masked-LM head is pretrained and stays frozen.
    saved_whole = tuple(p for p in graph.params if p in initialized or (p not in base and not heads.mlm)
                        or any(_under(hf_names[p], t) for t in settings.save))
    modules = {w[:-len(".weight")]: w for w in linear_weights(graph) if w not in saved_whole}
    targets = settings.targets or tuple(getattr(fam.layer, r).rsplit(".", 1)[-1] for r in ("query", "value"))
    adapted: dict[str, tuple[str, str]] = {}
    for t in targets:
        hit = [m for m in modules if _matches(hf_names[modules[m]][:-len(".weight")], t)]
        if not hit:
            ends = sorted({m.rsplit(".", 1)[-1] for m in modules})
            raise InputError(f"lora_targets: {t!r} names no linear layer of this {fam.name} model; its linears "
                             f"are named {', '.join(ends)} (or give a longer path, e.g. attention.self.query)")
        for m in hit:
            adapted[modules[m]] = (m + LORA_SUFFIXES[0], m + LORA_SUFFIXES[1])
            hf_module = hf_names[modules[m]][:-len(".weight")]
            hf_names.update({m + suffix: hf_module + suffix for suffix in LORA_SUFFIXES})
    ordered = {w: adapted[w] for w in graph.params if w in adapted}
    return LoraPlan(replace(settings, targets=tuple(targets)), ordered, hf_names, saved_whole)


def _matches(module: str, target: str) -> bool:
    """peft's check_target_module_exists for a list: the name itself, or a suffix after a dot."""
    return module == target or module.endswith("." + target)


def _under(param: str, module: str) -> bool:
    """Whether the parameter ``param`` (a Hugging Face name) lies in a module that ``module`` matches."""
    parts = param.split(".")[:-1]
    return any(_matches(".".join(parts[:i]), module) for i in range(1, len(parts) + 1))


def with_lora(graph: Graph, adapted: Mapping[str, tuple[str, str]], r: int, scale: float) -> Graph:
    """Each LINEAR whose weight (or a part of its fused Q/K/V weight) is adapted computes without its
    activation; LORA nodes then add each adapter's term to its columns, the last one applying the
    activation. The LINEAR's output keeps its name, so every reader is unchanged."""
    concat = {n.output: n.inputs for n in graph.nodes if n.op is Op.CONCAT}
    shapes = dict(graph.param_shapes)
    nodes: list[Node] = []
    for n in graph.nodes:
        parts, offset = [], 0
        if n.op is Op.LINEAR:
            for w in concat.get(n.inputs[1], (n.inputs[1],)):
                if w in adapted:
                    parts.append((w, offset))
                offset += shapes[w][0]
        if not parts:
            nodes.append(n)
            continue
        x, activation = n.inputs[0], n.kwargs["activation"]
        current = n.output + ".base"
        nodes.append(node(Op.LINEAR, n.inputs, current, activation="none"))
        for i, (w, off) in enumerate(parts):
            a, b = adapted[w]
            rows, k = graph.param_shapes[w]
            shapes[a], shapes[b] = (r, k), (rows, r)
            last = i == len(parts) - 1
            out = n.output if last else f"{n.output}.lora{i}"
            nodes.append(node(Op.LORA, [current, x, a, b], out, scale=float(scale), offset=off,
                              activation=activation if last else "none"))
            current = out
    return Graph(tuple(nodes), graph.inputs, graph.outputs, shapes)


# -- the saved adapter ----------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraOutput:
    """What a LoRA run saves at OUT's top level (fit's ``_save_model`` asks for ``files``): PEFT's two
    files, and cbert_head.json with the head's class and labels (PEFT records neither)."""

    plan: LoraPlan
    output: object  # the run's cbert.train.save.OutputModel: base folder, task, heads, labels

    @property
    def architecture(self) -> str:
        return self.output.architecture

    def adapter_config(self) -> dict:
        """PEFT's LoraConfig as save_pretrained writes it (the fields a loader reads)."""
        s = self.plan.settings
        names = self.plan.hf_names
        whole = sorted(set(s.save) | {_module(p, names[p]) for p in self.plan.saved_whole
                                      if not any(_under(names[p], t) for t in s.save)})
        return {"peft_type": "LORA", "task_type": PEFT_TASK_TYPES[self.output.task],
                "base_model_name_or_path": str(Path(self.output.base).absolute()), "revision": None,
                "inference_mode": True, "r": int(s.r), "lora_alpha": float(s.alpha), "lora_dropout": 0.0,
                "target_modules": sorted(s.targets), "modules_to_save": whole or None, "fan_in_fan_out": False,
                "bias": "none", "use_rslora": False, "use_dora": False, "lora_bias": False,
                "init_lora_weights": True, "layers_to_transform": None, "layers_pattern": None,
                "rank_pattern": {}, "alpha_pattern": {}}

    def files(self, params: Mapping[str, np.ndarray]) -> dict[str, bytes]:
        from safetensors.numpy import save

        names = self.plan.hf_names
        tensors = {}
        for p in self.plan.trainable:
            tensors[PEFT_PREFIX + names[p]] = np.ascontiguousarray(params[p], np.float32)
        head = {k: v for k, v in self.output.config_json().items()
                if k in ("architectures", "id2label", "label2id", "num_labels", "problem_type")}
        return {ADAPTER_WEIGHTS: save(tensors, metadata={"format": "pt"}),
                HEAD_CONFIG: _json(head), ADAPTER_CONFIG: _json(self.adapter_config())}


def _module(param: str, hf_name: str) -> str:
    """The module PEFT wraps whole for a parameter: a head's top-level module (``classifier``, which
    holds a RoBERTa head's dense and out_proj), else the parameter's own module (a pooler)."""
    return param.split(".", 1)[0] if hf_name == param else hf_name.rsplit(".", 1)[0]


def _json(d: dict) -> bytes:
    return (json.dumps(d, indent=2, ensure_ascii=False) + "\n").encode()


# -- merge-adapter --------------------------------------------------------------------------------

def write_merged(base: str | Path, adapter: str | Path, out: str | Path, overwrite: bool = False):
    """``cbert merge-adapter``: BASE with ADAPTER merged into its weights, written as a plain checkpoint
    folder OUT (config.json, model.safetensors, the tokenizer and sentence-transformers files) that
    transformers and cbert load without PEFT. OUT appears complete or not at all. Returns the merged
    checkpoint."""
    from safetensors.numpy import save

    from ..tools.prepare import sentence_transformers_files
    from ..train.save import TOKENIZER_FILES, WEIGHTS

    ckpt = load_checkpoint(base, adapter=adapter)
    folder = ckpt.path
    st = SafetensorsFile(ckpt.weights_file)
    tensors = {raw: st.get(raw) for raw in st.names()}  # buffers and tied twins as the base stores them
    tensors.update({ckpt.tensor_names[name]: a for name, a in ckpt.params.items()})
    config = dict(read_json(folder / "config.json"))
    config["architectures"] = [ckpt.architecture]
    for key in ("id2label", "label2id", "num_labels", "problem_type"):  # a head the adapter trained
        if key in ckpt.config.extra:
            config[key] = ckpt.config.extra[key]
        else:
            config.pop(key, None)
    files = {WEIGHTS: save({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
                           metadata={"format": "pt"})}
    files.update({name: read_bytes(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()})
    files.update(sentence_transformers_files(folder, log=lambda _: None))
    files["config.json"] = _json(config)
    with staged_folder(out, overwrite, "OUT") as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        load_checkpoint(tmp)  # what it wrote loads, every tensor in its shape
    return ckpt
