"""The HTML report: every section present, self-contained (no network assets), secrets redacted."""

from __future__ import annotations

import re

from tunelab.compare.report import SECTIONS, write_report
from tunelab.compare.table import build_comparison


def test_report_sections_offline_and_redacted(tmp_path, make_result):
    results = [make_result("base", False, [0.1, 0.2, 0.3]), make_result("base", True, [0.3, 0.2, 0.4]),
               make_result("tuned", False, [0.5, 0.6, 0.4]), make_result("tuned", True, [0.6, 0.7, 0.5])]
    results[2].train = {"train_seconds": 12.5, "tokens_per_s": 300.0, "peak_rss_mb": 900.0}
    comp = build_comparison(results, ["rougeL", "bleu"], {"recall@1": {"value": 0.5, "stderr": 0.1}})
    logs = {"tiny-model tuned": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5},
                                 {"event": "eval", "step": 2, "val_loss": 1.7}]}
    samples = [{"question": "q<1>", "reference": "r", "tiny-model base": "a & b"}]
    config = {"name": "exp", "judge": {"api_key": "sk-live-abcdef1234567890"}}
    path = write_report(tmp_path / "report.html", comp, title="t", train_logs=logs, samples=samples,
                        config=config, meta={"eval set": "eval.jsonl"})
    text = path.read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in text
    assert text.count("<svg") >= 4  # two metric plots, the loss curves, the latency plot
    assert not re.search(r"""(src|href)=["']https?://""", text), "the report must not load anything from the network"
    assert "<script" not in text
    assert "sk-live-abcdef1234567890" not in text
    assert "q&lt;1&gt;" in text and "a &amp; b" in text
    assert "Best on rougeL" in text
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temp file left
