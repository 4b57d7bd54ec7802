"""The forgetting check on the tiny model: base scored with the adapter off equals the plain base model,
the report's shape and verdicts, files, and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.evaluate.baseline import compare, render_baseline, run_baseline
from tunelab.evaluate.benchmarks.run import run_benchmarks

FILES = Path(__file__).parent / "files"
SLICES = Path(__file__).parent / "benchmark_slices"  # 20 real rows of TruthfulQA and HellaSwag (README there)
NAMES = ["hellaswag", "truthfulqa_mc1", "truthfulqa_mc2"]
# Student's t, two-sided 95% (0.975 quantile), from a printed table: degrees of freedom -> quantile
T975 = {2: 4.302653, 5: 2.570582, 99: 1.984217}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _base(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _adapter(model_dir: Path, out: Path, scale: float) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(_base(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                                                        task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale) if scale else p.zero_()
    model.save_pretrained(out)
    return out


def _with_adapter(model_dir, adapter):
    from tunelab.models.adapters import apply_adapter

    return apply_adapter(_base(model_dir), adapter, base_name="tiny")[0]


def test_base_side_equals_the_plain_base_model_and_report_shape(tiny_model_dir, tiny_tokenizer, tmp_path):
    model = _with_adapter(tiny_model_dir, _adapter(tiny_model_dir, tmp_path / "ad", scale=2.0))
    res = run_baseline(model, tiny_tokenizer, NAMES, limit=3, batch_size=4, benchmark_dir=FILES,
                       out_dir=tmp_path / "out")
    plain = run_benchmarks(_base(tiny_model_dir), tiny_tokenizer, NAMES, limit=3, batch_size=4, benchmark_dir=FILES)
    for name in NAMES:
        for metric, value in plain["benchmarks"][name]["metrics"].items():
            assert res["base"]["benchmarks"][name]["metrics"][metric] == pytest.approx(value, abs=1e-9, nan_ok=True)

    assert [(c["benchmark"], c["metric"]) for c in res["changes"]] == [
        ("hellaswag", "acc"), ("hellaswag", "acc_norm"), ("truthfulqa_mc1", "acc"), ("truthfulqa_mc2", "acc")]
    mc2 = res["changes"][-1]
    assert mc2["tuned"] != mc2["base"]  # the adapter moved the probabilities
    for c in res["changes"]:
        assert c["change"] == pytest.approx(c["tuned"] - c["base"])
        assert c["stderr_combined"] == pytest.approx((c["stderr_base"] ** 2 + c["stderr_tuned"] ** 2) ** 0.5)
        assert c["stderr_paired"] is not None and c["n"] == 3
        assert c["verdict"] in ("better", "worse", "within noise")
        half = T975[2] * c["stderr_paired"]  # paired over the 3 items: t with 2 degrees of freedom
        assert c["interval"] == "paired" and c["level"] == 0.95
        assert (c["ci_low"], c["ci_high"]) == pytest.approx((c["change"] - half, c["change"] + half))
        assert c["beyond_uncertainty"] == (c["ci_low"] > 0 or c["ci_high"] < 0)
    assert res["forgetting"] == any(c["verdict"] == "worse" for c in res["changes"])
    assert res["limit"] == 3 and "95% interval" in res["rule"]

    saved = json.loads((tmp_path / "out" / "baseline.json").read_text())
    assert saved["changes"] == json.loads(json.dumps(res["changes"]))
    assert (tmp_path / "out" / "base" / "benchmark_hellaswag.jsonl").is_file()
    assert (tmp_path / "out" / "tuned" / "benchmarks_summary.json").is_file()
    assert render_baseline(res).row_count == 4


def test_untrained_adapter_changes_nothing(tiny_model_dir, tiny_tokenizer, tmp_path):
    model = _with_adapter(tiny_model_dir, _adapter(tiny_model_dir, tmp_path / "zero", scale=0.0))
    res = run_baseline(model, tiny_tokenizer, ["truthfulqa_mc2"], limit=4, batch_size=4, benchmark_dir=FILES)
    (c,) = res["changes"]
    assert c["change"] == 0.0 and c["verdict"] == "within noise" and c["stderr_paired"] == 0.0
    assert res["forgetting"] is False and "files" not in res["base"]


def _bench(name: str, metrics: dict[str, float], n: int = 100) -> dict:
    return {"benchmarks": {name: {"n": n, "metrics": metrics}}}


def test_compare_unpaired_interval_is_95_percent_with_t():
    """Two summaries only: change +- t(0.975, n-1) x the combined standard error."""
    base = _bench("hellaswag", {"acc": 0.50, "acc_stderr": 0.05, "acc_norm": 0.40, "acc_norm_stderr": 0.03})
    tuned = _bench("hellaswag", {"acc": 0.30, "acc_stderr": 0.04, "acc_norm": 0.44, "acc_norm_stderr": 0.04})
    acc, norm = compare(base, tuned)
    assert acc["change"] == pytest.approx(-0.2) and acc["stderr_combined"] == pytest.approx(0.0640312, rel=1e-5)
    half = T975[99] * 0.0640312
    assert (acc["ci_low"], acc["ci_high"]) == pytest.approx((-0.2 - half, -0.2 + half), rel=1e-5)
    assert acc["verdict"] == "worse" and acc["interval"] == "unpaired" and acc["stderr_paired"] is None
    assert norm["verdict"] == "within noise" and norm["beyond_uncertainty"] is False
    better = compare(base, _bench("hellaswag", {"acc": 0.7, "acc_stderr": 0.05, "acc_norm": 0.4, "acc_norm_stderr": 0.03}))
    assert better[0]["verdict"] == "better"
    # a drop of 0.08 exceeds one combined standard error (0.064) but not the 95% interval (+-0.127)
    small = compare(base, _bench("hellaswag", {"acc": 0.42, "acc_stderr": 0.04, "acc_norm": 0.4, "acc_norm_stderr": 0.03}))
    assert small[0]["verdict"] == "within noise"
    single = compare(_bench("x", {"acc": 1.0, "acc_stderr": None}, 1), _bench("x", {"acc": 0.0, "acc_stderr": None}, 1))
    assert single[0]["verdict"] == "no stderr (n < 2)" and single[0]["beyond_uncertainty"] is None


def _summary(items: list[dict[str, float]]) -> dict:
    acc = [i["acc"] for i in items]
    mean = sum(acc) / len(acc)
    stderr = (sum((a - mean) ** 2 for a in acc) / (len(acc) - 1)) ** 0.5 / len(acc) ** 0.5
    return _bench("hellaswag", {"acc": mean, "acc_stderr": stderr}, len(items))


@pytest.mark.parametrize(("tuned_acc", "verdict"), [
    ([0, 0, 0, 1, 1, 1], "within noise"),  # d = -1,-1,-1,0,0,0: 1.96 would call this "worse"
    ([0, 0, 0, 0, 0, 1], "worse"),
])
def test_paired_interval_for_small_n_uses_the_t_quantile(tuned_acc, verdict):
    base_items = [{"acc": 1.0}] * 6
    tuned_items = [{"acc": float(a)} for a in tuned_acc]
    (row,) = compare(_summary(base_items), _summary(tuned_items), {"hellaswag": base_items}, {"hellaswag": tuned_items})
    d = [t - 1.0 for t in tuned_acc]
    mean = sum(d) / 6
    se = (sum((x - mean) ** 2 for x in d) / 5) ** 0.5 / 6**0.5  # by hand: sample sd / sqrt(n)
    assert row["change"] == pytest.approx(mean) and row["stderr_paired"] == pytest.approx(se)
    assert row["interval"] == "paired" and row["level"] == 0.95
    assert row["ci_low"] == pytest.approx(mean - T975[5] * se) and row["ci_high"] == pytest.approx(mean + T975[5] * se)
    assert row["verdict"] == verdict


def test_baseline_needs_an_adapter(tiny_model_dir, tiny_tokenizer):
    with pytest.raises(TunelabError, match="give --adapter"):
        run_baseline(_base(tiny_model_dir), tiny_tokenizer, ["hellaswag"], benchmark_dir=FILES)


def test_eval_cli_baseline(tiny_model_dir, tmp_path):
    adapter = _adapter(tiny_model_dir, tmp_path / "ad", scale=2.0)
    runner = CliRunner()
    args = ["eval", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--baseline", "--benchmark",
            "hellaswag,truthfulqa_mc1", "--benchmark-dir", str(FILES), "--limit", "3", "--batch-size", "4"]
    res = runner.invoke(app, [*args, "--json", "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["benchmarks"]["benchmarks"]["hellaswag"]["n"] == 3  # the tuned model's scores
    assert [c["benchmark"] for c in out["baseline"]["changes"]] == ["hellaswag", "hellaswag", "truthfulqa_mc1"]
    assert isinstance(out["baseline"]["forgetting"], bool) and out["baseline"]["limit"] == 3
    assert out["adapter"]["changes_outputs"] is True and out["warnings"] == []
    assert (tmp_path / "out" / "baseline" / "baseline.json").is_file()
    for model in ("base", "tuned"):  # progress lines on stderr (not a terminal), never on stdout
        assert re.search(rf"^[\d-]+ [\d:]+ {model} truthfulqa_mc1: (\d+)/\1 \(100%\)", res.stderr, re.M)

    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Forgetting check" in res.output and "95% interval" in res.output

    res = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--baseline"])
    assert res.exit_code == 2 and "--baseline compares the tuned model with its base: give --adapter" in res.output


@pytest.mark.slow
def test_smollm2_adapter_forgetting_check(tmp_path):
    """The real bundled model with a perturbed LoRA on q/v: the adapter check passes, the base side of the
    check equals the plain model, and the report covers both default benchmarks."""
    from peft import LoraConfig, get_peft_model

    from tunelab.evaluate.baseline import DEFAULT_BENCHMARKS
    from tunelab.models import load_model_and_tokenizer
    from tunelab.models.adapters import load_with_adapter

    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    plain = run_benchmarks(model, tok, list(DEFAULT_BENCHMARKS), limit=6, batch_size=16, benchmark_dir=SLICES)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")

    tuned, tok, report = load_with_adapter("smollm2-135m-instruct", tmp_path / "adapter")
    assert report.changes_outputs and report.warnings == []
    res = run_baseline(tuned, tok, limit=6, batch_size=16, benchmark_dir=SLICES)
    assert [c["benchmark"] for c in res["changes"]] == ["hellaswag", "hellaswag", "truthfulqa_mc1"]
    for name in DEFAULT_BENCHMARKS:
        for metric, value in plain["benchmarks"][name]["metrics"].items():
            assert res["base"]["benchmarks"][name]["metrics"][metric] == pytest.approx(value, abs=1e-9)
