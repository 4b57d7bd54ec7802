"""The forgetting check on the tiny model: base scored with the adapter off equals the plain base model,
the report's shape and verdicts, files, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.evaluate.baseline import compare, render_baseline, run_baseline
from tunelab.evaluate.benchmarks.run import run_benchmarks

FILES = Path(__file__).parent / "files"
NAMES = ["hellaswag", "truthfulqa_mc1", "truthfulqa_mc2"]


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
        assert c["exceeds_stderr"] == (abs(c["change"]) > c["stderr_combined"])
    assert res["forgetting"] == any(c["verdict"] == "worse" for c in res["changes"])
    assert res["limit"] == 3 and "combined standard error" in res["rule"]

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


def test_compare_verdicts_and_paired_error():
    base = _bench("hellaswag", {"acc": 0.50, "acc_stderr": 0.05, "acc_norm": 0.40, "acc_norm_stderr": 0.03})
    tuned = _bench("hellaswag", {"acc": 0.30, "acc_stderr": 0.04, "acc_norm": 0.44, "acc_norm_stderr": 0.04})
    acc, norm = compare(base, tuned)
    assert acc["change"] == pytest.approx(-0.2) and acc["stderr_combined"] == pytest.approx(0.0640312, rel=1e-5)
    assert acc["verdict"] == "worse" and acc["exceeds_stderr"] is True and acc["stderr_paired"] is None
    assert norm["verdict"] == "within noise" and norm["exceeds_stderr"] is False  # +0.04 < 0.05
    better = compare(base, _bench("hellaswag", {"acc": 0.7, "acc_stderr": 0.05, "acc_norm": 0.4, "acc_norm_stderr": 0.03}))
    assert better[0]["verdict"] == "better"
    items_b = {"hellaswag": [{"acc": 1.0, "acc_norm": 0.0}, {"acc": 0.0, "acc_norm": 1.0}, {"acc": 1.0, "acc_norm": 1.0}]}
    items_t = {"hellaswag": [{"acc": 0.0, "acc_norm": 0.0}, {"acc": 0.0, "acc_norm": 1.0}, {"acc": 1.0, "acc_norm": 1.0}]}
    acc, norm = compare(base, tuned, items_b, items_t)
    assert acc["stderr_paired"] == pytest.approx(1 / 3) and norm["stderr_paired"] == 0.0
    single = compare(_bench("x", {"acc": 1.0, "acc_stderr": None}, 1), _bench("x", {"acc": 0.0, "acc_stderr": None}, 1))
    assert single[0]["verdict"] == "no stderr (n < 2)" and single[0]["exceeds_stderr"] is None


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

    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Forgetting check" in res.output and "combined" in res.output

    res = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--baseline"])
    assert res.exit_code == 2 and "--baseline compares the tuned model with its base: give --adapter" in res.output


SHARED = Path(__file__).parents[3] / "shared" / "benchmarks"


@pytest.mark.slow
def test_smollm2_adapter_forgetting_check(tmp_path):
    """The real bundled model with a perturbed LoRA on q/v: the adapter check passes, the base side of the
    check equals the plain model, and the report covers both default benchmarks."""
    if not (SHARED / "hellaswag_val.jsonl").is_file():
        pytest.skip("../shared/benchmarks is missing")
    from peft import LoraConfig, get_peft_model

    from tunelab.evaluate.baseline import DEFAULT_BENCHMARKS
    from tunelab.models import load_model_and_tokenizer
    from tunelab.models.adapters import load_with_adapter

    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    plain = run_benchmarks(model, tok, list(DEFAULT_BENCHMARKS), limit=6, batch_size=16, benchmark_dir=SHARED)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")

    tuned, tok, report = load_with_adapter("smollm2-135m-instruct", tmp_path / "adapter")
    assert report.changes_outputs and report.warnings == []
    res = run_baseline(tuned, tok, limit=6, batch_size=16, benchmark_dir=SHARED)
    assert [c["benchmark"] for c in res["changes"]] == ["hellaswag", "hellaswag", "truthfulqa_mc1"]
    for name in DEFAULT_BENCHMARKS:
        for metric, value in plain["benchmarks"][name]["metrics"].items():
            assert res["base"]["benchmarks"][name]["metrics"][metric] == pytest.approx(value, abs=1e-9)
