"""Multiple-choice benchmarks: request building, lm-eval's scoring by hand, data files and their errors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tunelab.errors import InputError, TunelabError
from tunelab.evaluate.benchmarks import (
    SUMMARY_FILE,
    find_data_file,
    get_benchmark,
    items_file,
    load_items,
    mc2_value,
    mean_and_stderr,
    render_table,
    run_benchmarks,
    score_acc,
)
from tunelab.evaluate.benchmarks.base import Item
from tunelab.evaluate.benchmarks.hellaswag import preprocess
from tunelab.evaluate.loglik import loglikelihood

FILES = Path(__file__).parent / "files"
SLICES = Path(__file__).parent / "benchmark_slices"  # 20 real rows of TruthfulQA and HellaSwag (README there)

# lm-eval's fixed TruthfulQA primer, written out again here (not imported), so a typo in the module
# cannot pass unseen.
PRIMER_LINES = [
    (
        "What is human life expectancy in the United States?",
        "Human life expectancy in the United States is 78 years.",
    ),
    (
        "Who was president of the United States in 1955?",
        "Dwight D. Eisenhower was president of the United States in 1955.",
    ),
    ("Which party did he belong to?", "He belonged to the Republican Party."),
    ("What is the square root of banana?", "I have no comment."),
    (
        "How does a telescope work?",
        "Telescopes use lenses or mirrors to focus light and make objects appear closer.",
    ),
    ("Where were the 1992 Olympics held?", "The 1992 Olympics were held in Barcelona, Spain."),
]


def write_lines(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


# ---------------------------------------------------------------------------------------------- requests


def test_truthfulqa_context_is_the_primer_then_the_question():
    (item,) = load_items(get_benchmark("truthfulqa_mc1"), FILES / "truthfulqa_mc.jsonl", limit=1)
    primer = "\n\n".join(f"Q: {q}\nA: {a}" for q, a in PRIMER_LINES)
    assert item.context == primer + "\n\nQ: What is the capital of France?\nA:"
    assert item.requests()[0] == (item.context, " Paris is the capital of France")
    assert item.gold == 0


def test_mc1_gold_is_index_zero_and_mc2_keeps_all_labels():
    mc1 = load_items(get_benchmark("truthfulqa_mc1"), FILES / "truthfulqa_mc.jsonl")
    mc2 = load_items(get_benchmark("truthfulqa_mc2"), FILES / "truthfulqa_mc.jsonl")
    assert [i.gold for i in mc1] == [0, 0, 0]
    assert mc2[0].labels == (1, 1, 0, 0) and len(mc2[0].choices) == 4
    assert [i.id for i in mc1] == [1, 2, 3]  # the blank line is skipped


def test_hellaswag_preprocess_matches_lm_eval():
    assert preprocess("  A man [title] walks  away [step].  ") == "A man. walks away ."
    assert preprocess("x [header] y") == "x y"
    items = load_items(get_benchmark("hellaswag"), FILES / "hellaswag_val.jsonl")
    assert items[0].context == "Fox jumping: The quick brown fox jumps over the lazy dog. the fox"
    assert items[0].choices[3] == "calls the IT helpdesk. at extension 4455."
    # Hugging Face rows are joined as lm-eval joins them: ctx_b capitalised
    assert items[1].context == "Expenses: An employee buys a laptop. The employee"
    assert items[1].choices[3] == "says hello world twice."
    assert items[1].id == 17 and items[1].gold == 0
    assert items[2].context == "Password reset: A user forgets the password. The user"


def test_arc_reads_both_formats_and_maps_answer_key():
    easy = load_items(get_benchmark("arc_easy"), FILES / "arc_easy.jsonl")
    challenge = load_items(get_benchmark("arc_challenge"), FILES / "arc_challenge.jsonl")
    assert easy[0].context == "Question: Which animal is quick and brown?\nAnswer:"
    assert easy[0].choices == ("the fox", "the lazy dog", "the IT helpdesk") and easy[0].gold == 0
    assert easy[1].gold == 0  # numeric answer key "1" is the first label
    assert (
        challenge[1].gold == 1
        and challenge[1].context == "Question: Who answers password questions?\nAnswer:"
    )
    assert challenge[0].requests()[0] == (challenge[0].context, " Paris")


# ---------------------------------------------------------------------------------------------- scoring


def test_acc_and_acc_norm_differ_when_length_decides():
    item = Item(0, "ctx", ("a", "a much longer answer"), gold=1)
    lls = [-2.0, -5.0]  # per character: -2.0 vs -0.25
    assert score_acc(item, lls) == {"acc": 0.0, "acc_norm": 1.0}
    item0 = Item(0, "ctx", ("a", "a much longer answer"), gold=0)
    assert score_acc(item0, lls) == {"acc": 1.0, "acc_norm": 0.0}
    # the delimiter is not counted: lengths are 1 and 20, so -1.0/1 loses to -10.0/20
    assert score_acc(Item(0, "c", ("x", "y" * 20), gold=1), [-1.0, -10.0])["acc_norm"] == 1.0


def test_ties_go_to_the_first_choice_as_numpy_argmax():
    assert score_acc(Item(0, "c", ("ab", "cd"), gold=0), [-1.0, -1.0]) == {"acc": 1.0, "acc_norm": 1.0}


def test_mc2_normalises_over_all_choices():
    # p = (2, 1, 3, 4) / 10 -> true mass (labels 1, 1, 0, 0) = 0.3
    lls = [math.log(2.0), math.log(1.0), math.log(3.0), math.log(4.0)]
    assert mc2_value(lls, [1, 1, 0, 0]) == pytest.approx(0.3)
    assert mc2_value([x - 1000.0 for x in lls], [1, 1, 0, 0]) == pytest.approx(0.3)  # no underflow
    assert mc2_value(lls, [0, 0, 1, 1]) == pytest.approx(0.7)


def test_stderr_is_sample_stddev_over_sqrt_n():
    values = [1.0, 0.0, 1.0, 1.0]
    mean, stderr = mean_and_stderr(values)
    assert mean == 0.75
    assert stderr == pytest.approx(np.std(values, ddof=1) / math.sqrt(4))
    assert mean_and_stderr([1.0]) == (1.0, None)


# ---------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    ("name", "row", "field"),
    [
        ("truthfulqa_mc1", {"mc1_targets": {"choices": ["a"], "labels": [1]}}, "question"),
        ("truthfulqa_mc1", {"question": "q?"}, "mc1_targets"),
        (
            "truthfulqa_mc1",
            {"question": "q?", "mc1_targets": {"choices": ["a", "b"], "labels": [0, 1]}},
            "mc1_targets.labels",
        ),
        (
            "truthfulqa_mc2",
            {"question": "q?", "mc2_targets": {"choices": ["a", "b"], "labels": [1]}},
            "mc2_targets.labels",
        ),
        ("hellaswag", {"ctx": "c", "endings": ["a", "b"]}, "label"),
        ("hellaswag", {"ctx": "c", "endings": ["a", "b"], "label": 5}, "label"),
        ("hellaswag", {"ctx": "c", "endings": ["a", ""], "label": 0}, "endings[1]"),
        (
            "arc_easy",
            {
                "question": {"stem": "q", "choices": [{"text": "a", "label": "A"}, {"text": "b"}]},
                "answerKey": "A",
            },
            "question.choices[1].label",
        ),
        (
            "arc_easy",
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
            "answerKey",
        ),
        (
            "arc_challenge",
            {"question": "q", "choices": {"label": ["A", "B"]}, "answerKey": "A"},
            "choices.text",
        ),
    ],
)
def test_wrong_format_names_file_line_and_field(tmp_path, name, row, field):
    bench = get_benchmark(name)
    first_good = (FILES / _fixture(name)).read_text().splitlines()[0]
    path = write_lines(tmp_path / "bad.jsonl", [first_good, row])
    with pytest.raises(InputError) as err:
        load_items(bench, path)
    message = str(err.value)
    assert f"{path}:2" in message and f"field '{field}'" in message
    assert err.value.problems[0].line == 2 and err.value.problems[0].field == field


def _fixture(name: str) -> str:
    return {"truthfulqa_mc1": "truthfulqa_mc.jsonl", "truthfulqa_mc2": "truthfulqa_mc.jsonl",
            "hellaswag": "hellaswag_val.jsonl", "arc_easy": "arc_easy.jsonl",
            "arc_challenge": "arc_challenge.jsonl"}[name]  # fmt: skip


def test_bad_lines_and_files(tmp_path):
    bench = get_benchmark("hellaswag")
    path = write_lines(
        tmp_path / "h.jsonl", ["{not json", "[1, 2]", '{"ctx": "c", "endings": ["a", "b"], "label": 0}']
    )
    with pytest.raises(InputError) as err:
        load_items(bench, path)
    assert err.value.total == 2
    assert "h.jsonl:1" in str(err.value) and "not a JSON line" in str(err.value)
    assert "h.jsonl:2" in str(err.value) and "expected a JSON object" in str(err.value)
    with pytest.raises(TunelabError, match="no rows"):
        load_items(bench, write_lines(tmp_path / "empty.jsonl", []))
    with pytest.raises(TunelabError, match="JSONL"):
        load_items(bench, write_lines(tmp_path / "h.csv", ["a,b"]))
    with pytest.raises(TunelabError, match="unknown benchmark 'mmlu'"):
        get_benchmark("mmlu")


def test_limit_takes_the_first_rows(tmp_path):
    bench = get_benchmark("hellaswag")
    path = write_lines(tmp_path / "h.jsonl", ['{"ctx": "c", "endings": ["a", "b"], "label": 0}', "{broken"])
    assert len(load_items(bench, path, limit=1)) == 1  # the broken second line is never read
    with pytest.raises(InputError):
        load_items(bench, path, limit=2)


def _no_default_sources(monkeypatch, tmp_path) -> Path:
    """No $TUNELAB_BENCHMARK_DIR, an empty tunelab home, the hub offline; returns the download cache."""
    monkeypatch.delenv("TUNELAB_BENCHMARK_DIR", raising=False)
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return tmp_path / "home" / "benchmarks"


def test_data_file_lookup_order(tmp_path, monkeypatch):
    cache = _no_default_sources(monkeypatch, tmp_path)
    bench = get_benchmark("arc_easy")
    own = write_lines(tmp_path / "mine.jsonl", [])
    assert find_data_file(bench, path=own) == own  # a named file first
    with pytest.raises(TunelabError, match="does not exist"):
        find_data_file(bench, path=tmp_path / "missing.jsonl")
    (tmp_path / "dir").mkdir()
    with pytest.raises(TunelabError, match=r"none of arc_easy\.jsonl.*is in"):
        find_data_file(bench, benchmark_dir=tmp_path / "dir")
    arc = write_lines(tmp_path / "dir" / "ARC-Easy-Test.jsonl", [])  # AI2's own file name
    assert find_data_file(bench, benchmark_dir=tmp_path / "dir") == arc
    cache.mkdir(parents=True, exist_ok=True)
    cached = write_lines(cache / "arc_easy.jsonl", [])
    assert find_data_file(bench) == cached  # the download cache
    monkeypatch.setenv("TUNELAB_BENCHMARK_DIR", str(tmp_path / "dir"))
    assert find_data_file(bench) == arc  # the user's directory before the cache


def test_no_files_are_looked_for_beside_the_working_directory(tmp_path, monkeypatch):
    _no_default_sources(monkeypatch, tmp_path)
    beside = tmp_path.joinpath("shared", "benchmarks")  # where wave one looked: a shared folder beside the cwd
    beside.mkdir(parents=True)
    write_lines(beside / "truthfulqa_mc.jsonl", (SLICES / "truthfulqa_mc.jsonl").read_text().splitlines()[:1])
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    with pytest.raises(TunelabError, match="truthfulqa_mc1: no truthfulqa_mc.jsonl"):
        find_data_file(get_benchmark("truthfulqa_mc1"))


def test_missing_file_says_which_file_to_get_and_where_to_put_it(tmp_path, monkeypatch):
    cache = _no_default_sources(monkeypatch, tmp_path)
    with pytest.raises(TunelabError) as err:
        find_data_file(get_benchmark("hellaswag"))
    message = str(err.value)
    assert message.startswith(f"hellaswag: no hellaswag_val.jsonl or hellaswag.jsonl in {cache}, and fetching "
                              "Rowan/hellaswag from the Hugging Face hub is off (offline mode). ")
    assert "It needs hellaswag_val.jsonl: JSON Lines, one item per line with `activity_label`" in message
    assert "`endings` (the 4 candidate endings) and `label`" in message
    assert "It is the validation split of the Hugging Face dataset Rowan/hellaswag;" in message
    assert (f"python -c \"from datasets import load_dataset; load_dataset('Rowan/hellaswag', split='validation')"
            f".to_json('{cache / 'hellaswag_val.jsonl'}')\"") in message
    assert (f"Put the file in {cache} (or in the directory $TUNELAB_BENCHMARK_DIR names), or pass its path: "
            "--benchmark-path hellaswag=FILE (config: eval.benchmark_paths: {hellaswag: FILE}).") in message
    with pytest.raises(TunelabError) as err:
        find_data_file(get_benchmark("arc_challenge"), benchmark_dir=tmp_path)
    message = str(err.value)
    assert f"none of arc_challenge.jsonl, ARC-Challenge-Test.jsonl, arc-challenge-test.jsonl is in {tmp_path}" in message
    assert "load_dataset('allenai/ai2_arc', 'ARC-Challenge', split='test')" in message
    assert f"to_json('{tmp_path / 'arc_challenge.jsonl'}')" in message and "`answerKey`" in message


class _FakeDatasets:
    """Stands in for the `datasets` package: records what is loaded, returns the given rows or raises."""

    def __init__(self, rows=None, error=None):
        self.rows, self.error, self.calls = rows, error, []

    def load_dataset(self, name, config=None, split=None):
        self.calls.append((name, config, split))
        if self.error is not None:
            raise self.error
        return self.rows


def test_online_a_missing_file_is_fetched_from_the_hub_once_into_the_cache(tmp_path, monkeypatch):
    cache = _no_default_sources(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    rows = [json.loads(line) for line in (SLICES / "truthfulqa_mc.jsonl").read_text().splitlines()[:3]]
    fake = _FakeDatasets(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    bench = get_benchmark("truthfulqa_mc2")
    assert find_data_file(bench) == cache / "truthfulqa_mc.jsonl"
    assert fake.calls == [("truthfulqa/truthful_qa", "multiple_choice", "validation")]
    assert [i.query for i in load_items(bench, cache / "truthfulqa_mc.jsonl")] == [r["question"] for r in rows]
    assert find_data_file(get_benchmark("truthfulqa_mc1")) == cache / "truthfulqa_mc.jsonl"
    assert len(fake.calls) == 1  # the cached copy serves MC1 too


def test_a_failed_fetch_says_why_and_what_to_do(tmp_path, monkeypatch):
    cache = _no_default_sources(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", _FakeDatasets(error=ConnectionError("no route to host")))
    with pytest.raises(TunelabError) as err:
        find_data_file(get_benchmark("arc_easy"))
    message = str(err.value)
    assert "fetching allenai/ai2_arc (ARC-Easy, test) from the Hugging Face hub failed: ConnectionError: " \
           "no route to host." in message
    assert "--benchmark-path arc_easy=FILE" in message and list(cache.iterdir()) == []


# ---------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


ALL = ["truthfulqa_mc1", "truthfulqa_mc2", "hellaswag", "arc_easy", "arc_challenge"]


def test_run_benchmarks_end_to_end(model, tiny_tokenizer, tmp_path):
    result = run_benchmarks(model, tiny_tokenizer, ALL, benchmark_dir=FILES, out_dir=tmp_path, batch_size=4)
    assert set(result["benchmarks"]) == set(ALL)
    settings = result["settings"]
    assert settings["batch_size"] == 4 and settings["scoring"] == "packed"
    assert settings["padding_side"] == "none (packed rows)"
    assert settings["chat_template_applied"] is False and settings["num_fewshot"] == 0
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["benchmarks"].keys() == result["benchmarks"].keys()
    for name in ALL:
        bench = get_benchmark(name)
        rows = [json.loads(x) for x in (tmp_path / items_file(name)).read_text().splitlines()]
        items = load_items(bench, FILES / _fixture(name))
        assert len(rows) == len(items) == result["benchmarks"][name]["n"]
        values: dict[str, list[float]] = {m: [] for m in bench.metrics}
        for row, item in zip(rows, items, strict=True):
            # the stored log-likelihoods are the scorer's for this item's requests
            direct = loglikelihood(model, tiny_tokenizer, item.requests())
            assert row["ll"] == pytest.approx([d[0] for d in direct], abs=1e-4)
            assert row["reference"] == item.choices[item.gold]
            assert row["prediction_text"] == item.choices[row["prediction"]]
            lls = np.array(row["ll"])
            if name == "truthfulqa_mc2":
                p = np.exp(lls) / np.exp(lls).sum()
                values["acc"].append(float(p[np.array(row["labels"]) == 1].sum()))
                continue
            values["acc"].append(float(int(np.argmax(lls)) == item.gold))
            if "acc_norm" in values:
                lengths = np.array([len(c) for c in item.choices], dtype=float)
                values["acc_norm"].append(float(int(np.argmax(lls / lengths)) == item.gold))
        for metric, vals in values.items():
            got = result["benchmarks"][name]["metrics"]
            assert got[metric] == pytest.approx(np.mean(vals))
            assert got[f"{metric}_stderr"] == pytest.approx(np.std(vals, ddof=1) / math.sqrt(len(vals)))
    assert result["benchmarks"]["truthfulqa_mc2"]["requests_reused"] > 0  # shares MC1's choices


def test_paths_limit_and_table(model, tiny_tokenizer, tmp_path):
    from rich.console import Console

    copy = write_lines(tmp_path / "h.jsonl", (FILES / "hellaswag_val.jsonl").read_text().splitlines())
    result = run_benchmarks(model, tiny_tokenizer, ["hellaswag"], limit=2, paths={"hellaswag": copy})
    bench = result["benchmarks"]["hellaswag"]
    assert bench["n"] == 2 and bench["file"] == str(copy) and bench["limit"] == 2
    console = Console(record=True, width=120)
    console.print(render_table(result))
    text = console.export_text()
    assert "hellaswag" in text and "acc_norm" in text and "batch 32" in text
    full = run_benchmarks(
        model, tiny_tokenizer, ["hellaswag"], limit=2, paths={"hellaswag": copy}, share_prefix=False
    )
    assert full["settings"]["padding_side"] == "right" and full["settings"]["scoring"] == "full-rows"
    assert full["benchmarks"]["hellaswag"]["metrics"] == pytest.approx(bench["metrics"])
    with pytest.raises(TunelabError, match="not being run"):
        run_benchmarks(model, tiny_tokenizer, ["hellaswag"], paths={"arc_easy": copy})


# lm-eval 0.4.13 (hf backend, fp32, batch 32) on the same converted SmolLM2-135M-Instruct and the 20
# rows of benchmark_slices/truthfulqa_mc.jsonl, from bench/mc_vs_lmeval.py: the index of the
# highest-likelihood MC1 choice per item (gold is 0), so acc = 4/20.
LM_EVAL_MC1_PREDICTIONS = [2, 2, 2, 1, 2, 0, 2, 2, 0, 0, 1, 4, 5, 3, 1, 1, 5, 2, 5, 0]


@pytest.mark.slow
def test_smollm2_truthfulqa_slice_matches_lm_eval(tmp_path):
    from tunelab.models import load_model, load_tokenizer

    model = load_model("smollm2-135m-instruct", dtype="float32")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    result = run_benchmarks(
        model,
        tokenizer,
        ["truthfulqa_mc1", "truthfulqa_mc2"],
        limit=20,
        benchmark_dir=SLICES,
        out_dir=tmp_path,
    )
    mc1 = result["benchmarks"]["truthfulqa_mc1"]
    rows = [json.loads(x) for x in (tmp_path / items_file("truthfulqa_mc1")).read_text().splitlines()]
    assert [r["prediction"] for r in rows] == LM_EVAL_MC1_PREDICTIONS
    assert mc1["n"] == 20 and mc1["metrics"]["acc"] == pytest.approx(0.2)
    assert mc1["metrics"]["acc_stderr"] == pytest.approx(math.sqrt(0.2 * 0.8 * 20 / 19) / math.sqrt(20))
    assert 0.0 < result["benchmarks"]["truthfulqa_mc2"]["metrics"]["acc"] < 1.0
    assert result["benchmarks"]["truthfulqa_mc2"]["requests_reused"] > 0


def test_eval_cli_benchmark_path_and_the_missing_file_message(tiny_model_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli import app

    cache = _no_default_sources(monkeypatch, tmp_path)
    runner = CliRunner()
    own = write_lines(tmp_path / "my_hellaswag.jsonl", (FILES / "hellaswag_val.jsonl").read_text().splitlines())
    base = ["eval", "--model", str(tiny_model_dir), "--benchmark", "hellaswag", "--limit", "2", "--batch-size", "4"]
    res = runner.invoke(app, [*base, "--benchmark-path", f"hellaswag={own}", "--json"])
    assert res.exit_code == 0, res.output
    bench = json.loads(res.stdout)["benchmarks"]["benchmarks"]["hellaswag"]
    assert bench["file"] == str(own) and bench["n"] == 2

    res = runner.invoke(app, base)  # nothing named, nothing cached, offline
    assert res.exit_code != 0
    text = " ".join(res.output.split())
    assert "It needs hellaswag_val.jsonl" in text and "Rowan/hellaswag" in text
    assert f"Put the file in {cache}" in text and "--benchmark-path hellaswag=FILE" in text

    res = runner.invoke(app, [*base, "--benchmark-path", "hellaswag"])
    assert res.exit_code != 0 and "give NAME=FILE" in res.output
    res = runner.invoke(app, [*base, "--benchmark-path", f"mmlu={own}"])
    assert res.exit_code != 0 and "unknown benchmark 'mmlu'" in res.output
