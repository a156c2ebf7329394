"""A distillation student: a shallower copy of a teacher, initialized from every other teacher layer.

As the DistilBERT paper did (Sanh et al. 2019, section 3; transformers' research_projects/distillation/
scripts/extract_distilbert.py): the embeddings and the head are copied, and student layer j takes the
weights of teacher layer ``layers[j]`` (by default one out of two with the last kept, as
extract_distilbert.py took 0, 2, 4, 7, 9, 11 of 12; :func:`teacher_layers`). The
student is of the teacher's family, or a DistilBERT for a BERT teacher (``family="distilbert"``:
DistilBERT's tensor names, no token types, no pooler). DistilBERT has no token-type table; its
position table takes the teacher's token-type row 0 added in, so the student's embeddings of a
one-segment input start equal to the teacher's (extract_distilbert.py drops the row instead).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from ..checkpoint import Checkpoint, load_checkpoint
from ..config import ModelConfig
from ..errors import InputError
from ..families import Family, build_graph, family_of
from ..files import read_bytes, read_json, staged_folder
from ..heads import Heads
from ..train.fit import initial_params
from ..train.save import TASK_HEADS, TOKENIZER_FILES, WEIGHTS, OutputModel, write_into_new, write_replacing

# The fields of LayerNames that name one layer's linears and norms (each has .weight and .bias).
LAYER_PARTS = ("query", "key", "value", "attention_output", "attention_norm", "ffn_in", "ffn_out", "output_norm")
POSITIONS = "embeddings.position_embeddings.weight"
TOKEN_TYPES = "embeddings.token_type_embeddings.weight"
# A DistilBERT student's config.json from a BERT teacher's: DistilBertConfig's spelling of the
# shapes (from the parsed config, so BertConfig's defaults fill what the file leaves out) ...
DISTILBERT_SHAPES = {"vocab_size": "vocab_size", "max_position_embeddings": "max_position_embeddings",
                     "hidden_size": "dim", "num_attention_heads": "n_heads", "intermediate_size": "hidden_dim",
                     "pad_token_id": "pad_token_id"}
# ... and of the settings the teacher's file gives (absent ones: DistilBertConfig's defaults).
DISTILBERT_SETTINGS = {"hidden_act": "activation", "hidden_dropout_prob": "dropout",
                       "attention_probs_dropout_prob": "attention_dropout", "initializer_range": "initializer_range",
                       "id2label": "id2label", "label2id": "label2id", "problem_type": "problem_type"}
# The task a student's heads are trained for (cbert.train.save's names); none: a base model.
HEAD_TASKS = (("mlm", "mlm"), ("seq_cls", "seq-cls"), ("token_cls", "token-cls"), ("qa", "qa"))


def teacher_layers(total: int, n: int) -> list[int]:
    """Which of ``total`` teacher layers the ``n`` student layers take: one out of two, the first and
    the last kept and the rest evenly spread (rounded half up), as extract_distilbert.py chose
    0, 2, 4, 7, 9, 11 of BERT-base's 12. The last layer matters: it is the one the teacher's head
    reads (the assertion MiniLM's classifier over layers 0, 2, 4 starts at 40% dev accuracy, over
    0, 3, 5 at 74%). A single layer is the first."""
    if n == 1:
        return [0]
    return [(2 * j * (total - 1) + n - 1) // (2 * (n - 1)) for j in range(n)]


@dataclass
class Student:
    """A student model in memory: its config.json, parsed config, heads, weights by graph name."""

    config_json: dict
    config: ModelConfig
    heads: Heads
    params: dict[str, np.ndarray]
    task: str | None  # the head's task (cbert.train.save.TASKS), None for a base model
    layers: list[int]  # the teacher layer each student layer was copied from
    initialized: list[str] = field(default_factory=list)  # weights the teacher had no counterpart for
    teacher: Path | None = None  # the teacher folder (its tokenizer files are the student's)


def _check_layers(ckpt: Checkpoint, student_layers) -> list[int]:
    total = ckpt.config.num_hidden_layers
    if isinstance(student_layers, (int, np.integer)) and not isinstance(student_layers, bool):
        if not 1 <= student_layers <= total:
            raise InputError(f"student_layers={student_layers}: expected 1 to {total} (the teacher's "
                             f"{ckpt.path} has {total} layers)")
        return teacher_layers(total, int(student_layers))
    layers = list(student_layers) if isinstance(student_layers, Sequence) and not isinstance(student_layers, str) \
        else None
    if not layers or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < total
                         for i in layers):
        raise InputError(f"student_layers={student_layers!r}: expected a number of layers (1 to {total}) or a "
                         f"list of teacher layer indices in [0, {total})")
    return [int(i) for i in layers]


def _student_config(ckpt: Checkpoint, family: Family, n: int) -> dict:
    """The student's config.json: the teacher's with fewer layers, or a DistilBertConfig from a BertConfig."""
    raw = dict(read_json(ckpt.path / "config.json"))
    if family is family_of(ckpt.config):
        key = next((k for k, v in family.config_renames.items() if v == "num_hidden_layers" and k in raw),
                   "num_hidden_layers")
        raw[key] = n
        return raw
    out = {"model_type": "distilbert", "n_layers": n, "sinusoidal_pos_embds": False, "tie_weights_": True}
    out.update({theirs: getattr(ckpt.config, ours) for ours, theirs in DISTILBERT_SHAPES.items()})
    out.update({theirs: raw[ours] for ours, theirs in DISTILBERT_SETTINGS.items() if ours in raw})
    return out


def _student_heads(ckpt: Checkpoint) -> tuple[Heads, str | None]:
    """The teacher class's heads without next-sentence prediction (DistilBERT dropped NSP); a pooler
    only for a base model (the *For* classes with a pooler read it through their head)."""
    h = ckpt.heads
    task = next((t for attr, t in HEAD_TASKS if getattr(h, attr)), None)
    heads = Heads(pooler=task is None and h.pooler, mlm=h.mlm, seq_cls=h.seq_cls, token_cls=h.token_cls, qa=h.qa,
                  tied_decoder=h.tied_decoder)
    return heads, task


def student_from_teacher(teacher: Checkpoint, student_layers, family: str | None = None, seed: int = 42) -> Student:
    """The student of ``teacher`` (a loaded checkpoint) with ``student_layers`` layers (a count, or the
    teacher layer indices to copy), of the teacher's family or ``family="distilbert"`` for a BERT teacher."""
    t_fam = family_of(teacher.config)
    s_fam = t_fam if family in (None, t_fam.name) else None
    if family == "distilbert" and t_fam.name == "bert":
        s_fam = family_of(ModelConfig(model_type="distilbert"))
    if s_fam is None:
        raise InputError(f"student family {family!r}: a {t_fam.name} teacher ({teacher.path}) gives a {t_fam.name} "
                         "student" + (" or a distilbert one" if t_fam.name == "bert" else ""))
    layers = _check_layers(teacher, student_layers)
    if t_fam.name == "albert" and (len(layers) % teacher.config.num_hidden_groups or len(set(layers)) < len(layers)):
        raise InputError(f"student_layers={student_layers!r}: an ALBERT student shares its teacher's "
                         f"{teacher.config.num_hidden_groups} layer group(s); give a number of layers they divide")
    raw = _student_config(teacher, s_fam, len(layers))
    cfg = ModelConfig.from_dict(raw, source="the student's config.json")
    heads, task = _student_heads(teacher)
    graph = build_graph(cfg, heads)
    src = teacher.params
    # Same names, same tensor: the embeddings and, within a family, the heads (ALBERT: every weight,
    # one group's layers serving the whole depth). Another family's sequence classifier reads other
    # features (DistilBERT's pre_classifier + ReLU, not BERT's pooler): initialized as Hugging Face does.
    other_layout = {n + end for n in (*(h for h, _ in s_fam.seq_cls.hidden), s_fam.seq_cls.out)
                    for end in (".weight", ".bias")} if s_fam is not t_fam and heads.seq_cls else set()
    mapped = {name: src[name] for name, shape in graph.param_shapes.items()
              if name in src and tuple(src[name].shape) == tuple(shape) and name not in other_layout}
    if t_fam.name != "albert":
        if TOKEN_TYPES in src and TOKEN_TYPES not in graph.param_shapes:  # DistilBERT: type 0 into positions
            mapped[POSITIONS] = src[POSITIONS] + src[TOKEN_TYPES][0]
        for j, t in enumerate(layers):
            s_prefix, t_prefix = s_fam.layer.prefix.format(i=j), t_fam.layer.prefix.format(i=t)
            for part, end in product(LAYER_PARTS, (".weight", ".bias")):
                mapped[s_prefix + getattr(s_fam.layer, part) + end] = src[t_prefix + getattr(t_fam.layer, part) + end]
        if heads.mlm and s_fam is not t_fam:  # DistilBERT's vocab_transform, vocab_layer_norm, vocab_projector
            for role in ("dense", "layer_norm"):
                for end in (".weight", ".bias"):
                    mapped[getattr(s_fam.mlm, role) + end] = src[getattr(t_fam.mlm, role) + end]
            mapped[s_fam.mlm.bias] = src[t_fam.mlm.bias]
            if not heads.tied_decoder:
                mapped[s_fam.mlm.decoder_weight] = src[t_fam.mlm.decoder_weight]
    params, initialized = initial_params(cfg, graph, mapped, seed)
    return Student(raw, cfg, heads, params, task, layers, initialized, teacher.path)


def save_student(student: Student, out_dir, overwrite: bool = False) -> Path:
    """Write ``student`` as a Hugging Face folder (config.json, model.safetensors, the teacher's tokenizer
    files), built beside ``out_dir`` and renamed into place; an existing ``out_dir`` only with ``overwrite``."""
    out = Path(out_dir)
    fam = family_of(student.config)
    config = {**student.config_json, "architectures": [fam.class_name(TASK_HEADS.get(student.task, ()))]}
    tokenizer = {name: read_bytes(student.teacher / name) for name in TOKENIZER_FILES
                 if (student.teacher / name).is_file()}
    with staged_folder(out, replace=overwrite, what=f"{out} (the student folder)") as tmp:
        write_into_new(tmp, {**tokenizer, "config.json": (json.dumps(config, indent=2) + "\n").encode()})
        if student.task is None:  # a base model: its own names, as BertModel.save_pretrained writes them
            write_into_new(tmp, {WEIGHTS: save({k: np.ascontiguousarray(v, np.float32)
                                                for k, v in student.params.items()}, metadata={"format": "pt"})})
        else:  # OutputModel names the tensors as the *For* class does and adds the labels to config.json
            names = student.config.id2label
            labels = tuple(names[i] for i in sorted(names)) if names and (student.heads.seq_cls or
                                                                          student.heads.token_cls) else None
            output = OutputModel(tmp, student.config, student.task, student.heads, labels,
                                 student.config.extra.get("problem_type"))
            write_replacing(tmp, output.files(student.params))
    return out


def init_student(teacher_dir, out_dir, student_layers=None, family: str | None = None, overwrite: bool = False,
                 seed: int = 42) -> Student:
    """Initialize a student of the checkpoint ``teacher_dir`` and save it to ``out_dir`` (a Hugging Face
    folder transformers and cbert load). ``student_layers``: a number of layers (default half the
    teacher's) or the teacher layer indices to copy; ``family``: None (the teacher's) or "distilbert"
    (a BERT teacher). Returns the student (its ``layers`` say which teacher layers it took)."""
    teacher = load_checkpoint(teacher_dir)
    if student_layers is None:
        student_layers = max(1, teacher.config.num_hidden_layers // 2)
    student = student_from_teacher(teacher, student_layers, family, seed)
    save_student(student, out_dir, overwrite)
    return student
