"""Accuracy through the server: the local WikiText-2 lm-eval tasks and the result handling
(fast; the run against real servers is benchmarks/serve/lm_eval_server.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks.serve.lm_eval_server import TASKS_DIR, compare_metrics, lm_eval_command, read_metrics

RAW = (" = Alpha = \r\n \r\n Alpha is a word that starts many lists of names , and many things begin with it in a list"
       " of things , sorted by the letters of the alphabet , in the usual order \r\n = = History = = \r\n"
       " Short line . \r\n = Beta = \r\n Beta follows alpha in the Greek alphabet and it is used for many"
       " things in science , such as the beta coefficient and beta decay in physics . \r\n")


@pytest.fixture(scope="module")
def tasks_utils():
    pytest.importorskip("lm_eval", reason="needs the bench extra: pip install -e '.[bench]'")
    spec = importlib.util.spec_from_file_location("lm_eval_tasks_utils", TASKS_DIR / "utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_documents_are_cut_at_top_level_headings(tasks_utils):
    docs = tasks_utils.split_documents(RAW)
    assert len(docs) == 2
    assert docs[0].startswith(" = Alpha = \n") and " = = History = = " in docs[0]
    assert docs[1].startswith(" = Beta = ") and "\r" not in "".join(docs)


def test_lastword_examples(tasks_utils):
    ex = tasks_utils.lastword_examples(tasks_utils.split_documents(RAW), min_words=10)
    # Alpha's paragraph ends without a period; the heading and "Short line ." are skipped.
    assert ex == [{"context": "Beta follows alpha in the Greek alphabet and it is used for many things "
                              "in science, such as the beta coefficient and beta decay in",
                   "target": " physics"}]


def test_task_yamls_name_their_tasks():
    for name in ("wikitext2_local", "wikitext2_lastword"):
        assert f"task: {name}\n" in (TASKS_DIR / f"{name}.yaml").read_text()


def test_lm_eval_command_and_results(tmp_path):
    cmd = lm_eval_command("http://127.0.0.1:8000", "m", "/tok", "wikitext2_local", 6, tmp_path, 2048, 2)
    assert cmd[1:5] == ["-m", "lm_eval", "run", "--model"] and cmd[-2:] == ["--limit", "6"]
    assert "base_url=http://127.0.0.1:8000/v1/completions" in cmd[cmd.index("--model_args") + 1]
    out = tmp_path / "m" / "results_2026.json"
    out.parent.mkdir()
    out.write_text(json.dumps({"results": {"wikitext2_local": {
        "alias": "wikitext2_local", "word_perplexity,none": 30.0, "word_perplexity_stderr,none": "N/A",
        "bits_per_byte,none": 0.9}}, "n-samples": {"wikitext2_local": {"original": 62, "effective": 6}}}))
    m = read_metrics(tmp_path, "wikitext2_local")
    assert m == {"word_perplexity": 30.0, "bits_per_byte": 0.9, "samples": 6}
    rows = compare_metrics([{"label": "16-bit", "tasks": {"t": {"metrics": m}}},
                            {"label": "DuQuant W4A4", "tasks": {"t": {"metrics": {**m, "word_perplexity": 45.0}}}},
                            {"label": "opt", "tasks": {"t": {"metrics": {**m, "word_perplexity": 33.0}}}}])
    assert [(r["model"], r["metric"], r["ratio"]) for r in rows] == [
        ("DuQuant W4A4", "word_perplexity", 1.5), ("DuQuant W4A4", "bits_per_byte", 1.0),
        ("opt", "word_perplexity", 1.1), ("opt", "bits_per_byte", 1.0)]


def test_also_needs_label_and_checkpoint(tmp_path):
    from benchmarks.serve.lm_eval_server import _parse_also

    (tmp_path / "config.json").write_text("{}")
    assert _parse_also(f"old={tmp_path}") == ("old", tmp_path.resolve())
    for bad in ("nolabel", f"={tmp_path}", f"x={tmp_path / 'missing'}"):
        with pytest.raises(ValueError, match="--also"):
            _parse_also(bad)


def test_missing_results_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="no results"):
        read_metrics(Path(tmp_path), "x")
