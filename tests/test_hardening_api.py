"""Regressions for the Python API and CLI cases of the hardening issue (and what fuzzing found):
each bad input is one cbert error naming the argument, never a wrong result or a crash."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import assert_close
from test_families import family_checkpoints  # noqa: F401  (the fixture)

import cbert
from cbert.cli import main

TEXT = "the patient was given iv mg for chest pain"


@pytest.fixture(scope="module")
def models(checkpoints, family_checkpoints):  # noqa: F811
    """One numpy model of each head: mlm, seq (3 labels), tok (5 BIO labels), qa."""
    folders = {"mlm": checkpoints("head32_mlm")[0], "seq": family_checkpoints("bert_seq")[0],
               "tok": family_checkpoints("bert_tok")[0], "qa": family_checkpoints("bert_qa")[0]}
    return {k: cbert.load(f, backend="numpy") for k, f in folders.items()}


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- top_k ------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["fill_mask", "classify", "qa"])
def test_top_k_minus_one_is_an_input_error_not_all_candidates_but_one(models, task):
    call = {"fill_mask": lambda k: models["mlm"].fill_mask("the [MASK] was given", top_k=k),
            "classify": lambda k: models["seq"].classify(TEXT, top_k=k),
            "qa": lambda k: models["qa"].qa("what was given", TEXT, top_k=k)}[task]
    for bad in (-1, 0, 2.5, True, "3"):
        with pytest.raises(cbert.InputError, match=rf"^top_k={bad!r}; expected a positive integer$"):
            call(bad)
    assert len(call(2)) == 2  # a good top_k still gives exactly that many


def test_cli_top_k_minus_one_exits_2(models, capsys):
    code, out, err = _cli(capsys, "fill-mask", "--model", str(models["mlm"].checkpoint.path), "--backend", "numpy",
                          "--top-k", "-1", "the [MASK] was given")
    assert code == 2 and out == ""
    assert err.strip() == "cbert fill-mask: error: top_k=-1; expected a positive integer"


# -- qa ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("question,context,message", [
    ("what was given", None, "context is a NoneType, expected str"),
    (None, TEXT, "question is a NoneType, expected str"),
    (["what"], TEXT, "question is a list, expected str"),
    ("what was given", b"bytes", "context is a bytes, expected str"),
])
def test_qa_context_none_is_an_input_error_not_attribute_error(models, question, context, message):
    with pytest.raises(cbert.InputError, match=f"^{message}$"):
        models["qa"].qa(question, context)


# -- forward's arrays ---------------------------------------------------------------------------

@pytest.mark.parametrize("ids", [[], [[]], np.zeros((2, 0), np.int64)])
def test_forward_empty_list_says_input_ids_is_empty_not_dtype_float64(models, ids):
    with pytest.raises(cbert.InputError, match=r"^input_ids is empty \(shape \[[0-9, ]+\]\): nothing to run$"):
        models["mlm"].forward(ids)


@pytest.mark.parametrize("kwargs,message", [
    (dict(input_ids=[[5, 6], [7]]), r"input_ids is ragged \(rows of different lengths\)"),
    (dict(input_ids=[[5, 6]], token_type_ids=[[0, 1], [1]]), r"token_type_ids is ragged"),
    (dict(input_ids=[5.0, 6.0]), r"input_ids must hold integers; got dtype float64"),
    (dict(input_ids=[True, False]), r"input_ids must hold integers; got booleans"),
    (dict(input_ids=[5, 6], token_type_ids=[True, False]), r"token_type_ids must hold integers; got booleans"),
    (dict(input_ids=np.ones((1, 2, 3), np.int64)), r"input_ids must be \[batch, seq\]; got shape \[1, 2, 3\]"),
    (dict(input_ids=[5, 6], attention_mask=[1, 2]), r"attention_mask\[0, 1\] = 2 is outside \[0, 2\)"),
    (dict(input_ids=[5, -6]), r"input_ids\[0, 1\] = -6 is outside \[0, 133\) \(vocab_size\)"),
    (dict(input_ids=[5, 133]), r"input_ids\[0, 1\] = 133 is outside \[0, 133\) \(vocab_size\)"),
    (dict(input_ids=np.array([5, 2 ** 63 + 1], np.uint64)), r"input_ids holds 9223372036854775809, beyond any"),
    (dict(input_ids=[5, 6], position_ids=np.zeros((1, 1, 2), np.int64)),
     r"position_ids has shape \[1, 1, 2\] but input_ids has \[1, 2\]"),
])
def test_malformed_arrays_are_input_errors_naming_the_argument(models, kwargs, message):
    with pytest.raises(cbert.InputError, match=message):
        models["mlm"].forward(**kwargs)


def test_boolean_attention_mask_still_runs(models):
    got = models["mlm"].forward([[5, 6, 0]], attention_mask=[[True, True, False]]).last_hidden_state
    want = models["mlm"].forward([[5, 6, 0]], attention_mask=[[1, 1, 0]]).last_hidden_state
    np.testing.assert_array_equal(got, want)


def test_host_heads_refuse_non_finite_hidden_instead_of_returning_nan(models):
    hidden = np.zeros((1, 2, 64), np.float32)
    hidden[0, 1, 3] = np.nan
    with pytest.raises(cbert.InputError, match="^hidden holds NaN or infinite values$"):
        models["mlm"].mlm_logits(hidden)
    huge = np.full((1, 2, 64), 1e38, np.float32)
    huge[..., ::2] *= -1
    with pytest.raises(cbert.InputError, match="masked-LM head overflows to NaN or infinity"):
        models["mlm"].mlm_logits(huge)
    with pytest.raises(cbert.InputError, match=r"hidden must be a float array"):
        models["mlm"].mlm_logits("not an array")


# -- batch_size, stride, max_answer_len, choices ------------------------------------------------

@pytest.mark.parametrize("call,message", [
    (lambda m: m["mlm"].embed([TEXT], batch_size=0), r"^batch_size=0; expected a positive integer$"),
    (lambda m: m["mlm"].embed([TEXT], batch_size=True), r"^batch_size=True; expected a positive integer$"),
    (lambda m: m["seq"].classify(TEXT, batch_size=2.0), r"^batch_size=2.0; expected a positive integer$"),
    (lambda m: m["mlm"].embed([TEXT], stride=-1), r"^stride=-1; expected None or an integer >= 0"),
    (lambda m: m["tok"].ner(TEXT, stride=2.5), r"^stride=2.5; expected None or an integer >= 0"),
    (lambda m: m["qa"].qa("what", TEXT, stride="3"), r"^stride='3'; expected None or an integer >= 0"),
    (lambda m: m["tok"].ner(TEXT * 9, stride=40), r"^stride=40: expected 0 <= stride < 38"),
    (lambda m: m["qa"].qa("what", TEXT, max_answer_len=0), r"^max_answer_len=0; expected a positive integer$"),
    (lambda m: m["qa"].qa("what", TEXT, max_answer_len=-3), r"^max_answer_len=-3; expected a positive integer$"),
    (lambda m: m["mlm"].embed([TEXT], pooling="median"), r"^pooling='median'; choose one of cls, mean, max$"),
    (lambda m: m["mlm"].embed([TEXT], normalize="yes"), r"^normalize='yes'; expected True or False$"),
    (lambda m: m["seq"].classify(TEXT, function_to_apply="relu"),
     r"^function_to_apply='relu'; choose one of softmax, sigmoid, none$"),
    (lambda m: m["seq"].classify(None), r"^texts is a NoneType, expected a str or a list of str$"),
    (lambda m: m["tok"].ner([]), r"^texts is empty: nothing to run$"),
    (lambda m: m["mlm"].fill_mask(None), r"^text is a NoneType, expected str$"),
])
def test_bad_batch_size_stride_max_answer_len_are_one_input_error(models, call, message):
    with pytest.raises(cbert.InputError, match=message):
        call(models)


def test_a_missing_head_is_a_checkpoint_error(models):
    with pytest.raises(cbert.CheckpointError, match="classify needs a sequence classification head"):
        models["tok"].classify(TEXT)
    with pytest.raises(cbert.CheckpointError, match="fill-mask needs a masked-LM head"):
        models["seq"].fill_mask("the [MASK]")
    with pytest.raises(cbert.CheckpointError, match="this checkpoint has no pooler"):
        models["mlm"].pooler_output(np.zeros((1, 2, 64), np.float32))


# -- found by fuzzing ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\x00\x01\x7f", "\u200b"])
def test_ner_of_a_text_without_tokens_is_empty_not_index_error(models, text):
    assert models["tok"].ner(text) == []
    assert models["tok"].ner([text, TEXT])[0] == []


def test_cli_empty_text_argument_is_a_text_not_the_current_folder(models, capsys):
    code, out, err = _cli(capsys, "embed", "--model", str(models["mlm"].checkpoint.path), "--backend", "numpy",
                          "", TEXT)
    assert code == 0, err
    got = np.array([json.loads(line) for line in out.splitlines()])
    assert_close(got, models["mlm"].embed(["", TEXT]), "embeddings", 1e-5)


# -- one default, declared by the checkpoint ----------------------------------------------------

def _sentence_transformers_copy(src, dst, pooling_key: str):
    shutil.copytree(src, dst)
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps({pooling_key: True}))
    (dst / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return dst


def test_api_and_cli_take_the_same_embedding_default_from_modules_json(checkpoints, tmp_path, capsys):
    """Regression: model.embed() defaulted to normalize=False while `cbert embed` honoured modules.json."""
    folder = _sentence_transformers_copy(checkpoints("odd13")[0], tmp_path / "st", "pooling_mode_cls_token")
    model = cbert.load(folder, backend="numpy")
    assert (model.embedding_defaults.pooling, model.embedding_defaults.normalize) == ("cls", True)
    got = model.embed([TEXT, "no fever"])
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)
    assert_close(got, model.embed([TEXT, "no fever"], pooling="cls", normalize=True), "declared default", 0)
    code, out, err = _cli(capsys, "embed", "--model", str(folder), "--backend", "numpy", TEXT, "no fever")
    assert code == 0, err
    assert_close(np.array([json.loads(line) for line in out.splitlines()]), got, "cbert embed", 1e-5)
    assert "pooling=cls, normalize=True" in err
    # Without modules.json: mean pooling, not normalized, as before.
    plain = cbert.load(checkpoints("odd13")[0], backend="numpy")
    assert plain.embedding_defaults.declared_by is None
    assert_close(plain.embed([TEXT]), plain.embed([TEXT], pooling="mean", normalize=False), "cbert's default", 0)


def test_explicit_arguments_override_the_declared_default(checkpoints, tmp_path):
    folder = _sentence_transformers_copy(checkpoints("odd13")[0], tmp_path / "st", "pooling_mode_max_tokens")
    model = cbert.load(folder, backend="numpy")
    plain = cbert.load(checkpoints("odd13")[0], backend="numpy")
    assert_close(model.embed([TEXT], normalize=False), plain.embed([TEXT], pooling="max"), "normalize=False", 0)
    assert_close(model.embed([TEXT], pooling="mean"), plain.embed([TEXT], normalize=True), "pooling=mean", 0)


# -- cbert info lists every head ----------------------------------------------------------------

@pytest.mark.parametrize("name,heads", [
    ("seq", "pooler, sequence classification (3 labels: NO_READMISSION, READMISSION, DECEASED)"),
    ("tok", "token classification (5 labels: O, B-PROBLEM, I-PROBLEM, B-TREATMENT, I-TREATMENT)"),
    ("qa", "question answering (start/end logits)"),
    ("mlm", "mlm (decoder tied to word embeddings)"),
])
def test_info_lists_classification_ner_and_qa_heads_not_encoder_only(models, capsys, name, heads):
    code, out, err = _cli(capsys, "info", str(models[name].checkpoint.path))
    assert code == 0, err
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.startswith(("heads", "embedding")))
    assert rows["heads"] == heads
    assert "encoder only" not in out
    assert rows["embedding"] == "mean pooling, not normalized (cbert's default, no modules.json)"


def test_info_names_the_heads_a_forward_does_not_output(checkpoints, tmp_path, capsys):
    """A BertModel file that also holds cls.predictions.*: the head is loaded, for model.mlm_logits only."""
    folder = tmp_path / "m"
    shutil.copytree(checkpoints("head32_mlm")[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertModel"]}))
    code, out, err = _cli(capsys, "info", str(folder))
    assert code == 0, err
    assert "mlm (decoder tied to word embeddings; model.mlm_logits only, not in forward)" in out


def test_info_says_the_embedding_defaults_of_modules_json(checkpoints, tmp_path, capsys):
    folder = _sentence_transformers_copy(checkpoints("odd13")[0], tmp_path / "st", "pooling_mode_cls_token")
    code, out, err = _cli(capsys, "info", str(folder))
    assert code == 0, err
    assert "embedding      cls pooling, normalized (declared by modules.json)" in out


def test_an_unreadable_modules_json_fails_only_the_embeddings_that_need_it(checkpoints, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(checkpoints("odd13")[0], folder)
    (folder / "modules.json").write_text("[not json")
    model = cbert.load(folder, backend="numpy")  # forward and explicit embeddings still work
    assert model.forward([[5, 6]]).last_hidden_state.shape == (1, 2, 52)
    plain = cbert.load(checkpoints("odd13")[0], backend="numpy")
    assert_close(model.embed([TEXT], pooling="cls", normalize=False), plain.embed([TEXT], pooling="cls"), "named", 0)
    with pytest.raises(cbert.CheckpointError, match=r"modules.json: not valid JSON .*; to embed without its "
                                                    r"defaults, name both pooling and normalize"):
        model.embed([TEXT], pooling="cls")
    code, out, err = _cli(capsys, "info", str(folder))
    assert code == 0, err
    assert "embedding      unknown: " in out and "modules.json: not valid JSON" in out


def test_auto_backend_honours_the_dtype(checkpoints):
    """Regression: `--dtype float16` with the default `--backend auto` failed ("backend='numpy' does
    not run dtype='float16'") instead of choosing a backend that runs float16."""
    folder, _ = checkpoints("odd13")
    for dtype in ("float16", "bfloat16"):
        model = cbert.load(folder, backend="auto", dtype=dtype)
        assert dtype in type(model.backend).dtypes and model.backend.dtype == dtype
        assert model.forward([[2, 7, 9, 3]]).last_hidden_state.shape == (1, 4, 52)
    assert cbert.load(folder, backend="auto").backend.dtype == "float32"


def test_warnings_point_at_the_callers_line_not_cbert_source(checkpoints, monkeypatch):
    """Regression: the software-adapter warning printed a line of cbert's own source."""
    import warnings

    import cbert.backends.wgpu.device as device

    folder, _ = checkpoints("odd13")
    gpu = device.SHARED.get()
    monkeypatch.setattr(gpu, "warned_software", False)
    monkeypatch.setattr(gpu, "info", dict(gpu.info, software=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cbert.load(folder, backend="wgpu")
    found = [w for w in caught if "software" in str(w.message)]
    assert found and found[0].filename == __file__, [(w.filename, str(w.message)) for w in caught]
