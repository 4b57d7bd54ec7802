"""Multiple-choice benchmarks scored exactly as lm-evaluation-harness scores them.

Picked by lm-eval task name: truthfulqa_mc1, truthfulqa_mc2, hellaswag, arc_easy, arc_challenge.

    result = run_benchmarks(model, tokenizer, ["truthfulqa_mc1", "hellaswag"], limit=100, out_dir=out)
    console.print(render_table(result))
"""

from .base import Benchmark, Item, RowError, mc2_value, mean_and_stderr, score_acc, score_acc_only, score_mc2
from .registry import (
    ENV_DIR,
    REGISTRY,
    default_dirs,
    describe,
    find_data_file,
    get_benchmark,
    list_benchmarks,
    load_items,
    resolve_items,
)
from .run import SUMMARY_FILE, items_file, render_table, run_benchmarks

__all__ = [
    "ENV_DIR",
    "REGISTRY",
    "SUMMARY_FILE",
    "Benchmark",
    "Item",
    "RowError",
    "default_dirs",
    "describe",
    "find_data_file",
    "get_benchmark",
    "items_file",
    "list_benchmarks",
    "load_items",
    "mc2_value",
    "mean_and_stderr",
    "render_table",
    "resolve_items",
    "run_benchmarks",
    "score_acc",
    "score_acc_only",
    "score_mc2",
]
