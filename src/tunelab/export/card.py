"""The run's model card: tunelab's own README.md for an adapter or a merged model, filled from what the
run directory records, in place of PEFT's empty template.

    text = build_card(Path("runs/exp/train/smollm2-135m-instruct"))          # the adapter's card
    text = build_card(run_dir, kind="merged", repo="me/exp-merged")          # a merged model's card
    write_run_card(run_dir)                                                  # README.md, if it is ours

What it says, and where each fact comes from:
- YAML front matter the Hub reads: base_model (the base's public id, models.public; left out when the
  base is a local model with no public id), base_model_relation, library_name (peft for an adapter,
  transformers for a merged or fully trained model), license (the bundled model's licence, the
  converted model's provenance, or the base's own card), pipeline_tag and tags;
- what was trained: method and hyperparameters from config.resolved.yaml, and from summary.json the
  data hash, examples and tokens, steps, train time, precision, final losses, chat template;
- the evaluation: when the run is the tuned variant of a `tunelab run` experiment
  (`<experiment>/train/<model>`), the rows of `<experiment>/compare/comparison.json` for its base model
  (each metric with its standard error or 95% interval) and the contrasts with their 95% intervals; a
  comparison whose recorded training summary is not this run's is named as stale and not shown;
- how to load it (PEFT / transformers with the public base id; tunelab commands);
- the limitations tunelab knows: training-set size, no validation split, held-out n, the base's weights
  having been converted from a quantised GGUF.

No local path of the model cache and no secret reaches the card: the base is named by its public id,
and the text passes tunelab.secrets' redactor (write_run_card writes through tunelab.io, which masks too).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..io import write_text
from ..secrets import redact_text

CARD_MARKER = "<!-- tunelab model card: written from this run's files by tunelab; regenerate with `tunelab export card` -->"
KINDS = ("adapter", "merged")
SMALL_TRAIN_SET = 500  # below this many training examples the card warns the adapter may not generalise
SMALL_EVAL_SET = 100  # below this many held-out questions the card says the intervals are wide
_HUB_LICENCES = {"gemma terms of use": "gemma"}  # licence names whose Hub identifier differs
_REPO_PLACEHOLDER = "PATH_OR_REPO_ID"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_config(run_dir: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.resolved.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary.json, config.resolved.yaml) of a finished training run; TunelabError otherwise."""
    summary = _read_json(run_dir / "summary.json")
    if summary is None:
        raise TunelabError(f"{run_dir}: no readable summary.json; is it a run directory written by `tunelab train`?")
    if summary.get("status") not in ("completed", "early_stopped") or not (summary.get("artifact") or {}).get("kind"):
        raise TunelabError(f"{run_dir}: the run has not finished (status {summary.get('status')!r}), so it has no "
                           "trained weights to describe; finish it with `tunelab train CONFIG --resume`")
    return summary, _read_config(run_dir)


def find_comparison(run_dir: Path, summary: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(comparison.json, None) when the run is the tuned variant of an experiment whose comparison was made
    with these very weights; (None, why) when a comparison exists but is about other weights; (None, None)
    when there is none."""
    if run_dir.resolve().parent.name != "train":
        return None, None
    comparison = _read_json(run_dir.resolve().parent.parent / "compare" / "comparison.json")
    if comparison is None:
        return None, None
    tuned = [r for r in comparison.get("rows", []) if r.get("kind") == "tuned" and r.get("model") == summary.get("model")]
    if not tuned:
        return None, None
    recorded = tuned[0].get("train") or {}
    if any(recorded.get(k) != summary.get(k) for k in ("steps", "final_train_loss", "train_seconds")):
        return None, ("the experiment's comparison was made with other weights than these (its training summary "
                      "differs); run `tunelab compare CONFIG` to measure this run")
    return comparison, None


def build_card(run_dir: Path, *, kind: str = "adapter", repo: str | None = None) -> str:
    """The model card (README.md text) of a training run's adapter (kind "adapter") or of the model merged
    from it (kind "merged"); a run that trained the whole model is described as a full model either way.
    repo: the Hub repo it goes to, used in the loading snippet."""
    from ..models.public import public_base

    if kind not in KINDS:
        raise TunelabError(f"model card kind {kind!r}: choose one of {', '.join(KINDS)}")
    run_dir = Path(run_dir)
    summary, config = read_run(run_dir)
    if summary["artifact"]["kind"] == "full":
        kind = "full"
    model_name = str(summary.get("model") or (config.get("model") or {}).get("name") or "")
    base = public_base(model_name)
    comparison, stale = find_comparison(run_dir, summary)
    where = repo or _REPO_PLACEHOLDER
    parts = [
        _front_matter(kind, base, summary),
        CARD_MARKER,
        "",
        *_title(kind, base, summary, config),
        *_training(summary, config),
        *_evaluation(comparison, stale, summary),
        *_usage(kind, base, where),
        *_limitations(kind, base, summary, comparison),
        *_versions(),
    ]
    return redact_text("\n".join(parts).rstrip() + "\n")


def write_run_card(run_dir: Path) -> Path | None:
    """Write the run's card into its README.md, replacing only a card tunelab wrote (or PEFT's empty
    template, which tunelab versions before the card left there); a README.md of the user's is kept and
    None returned."""
    target = Path(run_dir) / "README.md"
    if target.exists() and not is_replaceable_card(target):
        return None
    return write_text(target, build_card(Path(run_dir)))


def is_replaceable_card(path: Path) -> bool:
    """A README.md tunelab may overwrite: its own card, or PEFT's untouched template."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    peft_template = "library_name: peft" in text and "[More Information Needed]" in text
    return CARD_MARKER in text or peft_template


# -- sections -------------------------------------------------------------------------------------


def hub_licence(licence: str | None) -> list[str]:
    """The front matter's licence lines: a Hub licence id, or `other` with the licence's name."""
    if not licence or licence == "unknown":
        return []
    known = _HUB_LICENCES.get(licence.lower())
    if known:
        return [f"license: {known}"]
    if re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", licence):
        return [f"license: {licence}"]
    return ["license: other", f"license_name: {re.sub(r'[^a-z0-9]+', '-', licence.lower()).strip('-')}"]


def _front_matter(kind: str, base: Any, summary: dict[str, Any]) -> str:
    lines = ["---"]
    if base.on_hub:
        lines.append(f"base_model: {base.id}")
        lines.append(f"base_model_relation: {'adapter' if kind == 'adapter' else 'finetune'}")
    lines.append(f"library_name: {'peft' if kind == 'adapter' else 'transformers'}")
    lines += hub_licence(base.licence)
    lines.append("pipeline_tag: text-generation")
    tags = ["tunelab", str(summary.get("method") or ""), str(summary.get("objective") or "")]
    if base.on_hub:
        tags.append(f"base_model:{'adapter' if kind == 'adapter' else 'finetune'}:{base.id}")
    lines.append("tags:")
    lines += [f"- {t}" for t in dict.fromkeys(tags) if t]
    lines.append("---")
    return "\n".join(lines)


def _title(kind: str, base: Any, summary: dict[str, Any], config: dict[str, Any]) -> list[str]:
    method = summary.get("method") or (config.get("method") or {}).get("name") or "?"
    what = {"adapter": f"a {method} adapter", "merged": f"a {method} adapter merged into its base",
            "full": "a fully fine-tuned model"}[kind]
    # a local base is named by its folder only: the card may go public, the folders above it need not
    base_text = (f"[{base.id}](https://huggingface.co/{base.id})" if base.on_hub
                 else f"a local model (`{Path(base.id).name}`, no public id)")
    return [f"# {summary.get('name') or 'tunelab run'}", "",
            f"{what[0].upper()}{what[1:]} of {base_text}, trained with tunelab "
            f"({summary.get('objective') or 'sft'} objective).", ""]


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _training(summary: dict[str, Any], config: dict[str, Any]) -> list[str]:
    method = config.get("method") or {}
    train = config.get("train") or {}
    data_cfg = config.get("data") or {}
    stats = (summary.get("data") or {}).get("train") or {}
    val = (summary.get("data") or {}).get("validation") or {}
    name = method.get("name") or summary.get("method")
    method_text = str(name)
    if name in ("lora", "dora", "qlora"):
        method_text += (f" (r {method.get('r')}, alpha {_num(method.get('alpha'))}, dropout {_num(method.get('dropout'))}, "
                        f"target modules: {', '.join(summary.get('target_modules') or []) or method.get('target_modules')})")
    elif name in ("prompt", "prefix"):
        method_text += f" ({method.get('num_virtual_tokens')} virtual tokens)"
    template = summary.get("template") or {}
    rows = [
        ("method", method_text),
        ("objective", summary.get("objective") or train.get("objective")),
        ("learning rate", f"{_num(train.get('lr'))}, {train.get('scheduler')} schedule, warmup ratio "
                          f"{_num(train.get('warmup_ratio'))}, weight decay {_num(train.get('weight_decay'))}"),
        ("batch", f"{train.get('batch_size')} per step x {train.get('grad_accum')} accumulation "
                  f"(global batch {summary.get('global_batch', '-')})"),
        ("epochs / steps", f"{_num(summary.get('epochs_completed'), 3)} / {summary.get('steps')}"),
        ("max sequence length", data_cfg.get("max_length")),
        ("precision", f"{summary.get('precision')} on {summary.get('device')}"),
        ("training data", f"{stats.get('examples', '-')} examples, {stats.get('tokens', '-')} tokens "
                          f"({stats.get('loss_tokens', '-')} trained on)"),
        ("validation data", f"{val.get('examples')} examples" if val else "none (every example trained)"),
        ("data hash (sha256)", f"`{summary.get('dataset_hash')}`"),
        ("train time", f"{_num(summary.get('train_seconds'), 3)} s of training "
                       f"({_num(summary.get('wall_seconds'), 3)} s wall)"),
        ("final train loss", _num(summary.get("final_train_loss"))),
        ("final validation loss", _num(summary.get("final_val_loss"))),
        ("trainable parameters", f"{summary.get('trainable_params')} of {summary.get('total_params')}"),
        ("chat template", f"{template.get('name', '-')} (sha256 `{str(template.get('sha256', '-'))[:16]}`), "
                          f"stop tokens: {', '.join(f'`{t}`' for t in template.get('stop_tokens') or []) or '-'}"),
    ]
    lines = ["## Training", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v if v is not None else '-'} |" for k, v in rows]
    for stage in summary.get("stages") or []:
        lines.append(f"| stage {stage.get('index')} {stage.get('name')} | {stage.get('method')}, "
                     f"{stage.get('objective')}, {stage.get('steps')} steps |")
    auto = summary.get("auto") or {}
    if auto:
        lines += ["", "Settings tunelab chose from the data (`auto`): " + "; ".join(
            f"{k} = {_num(v.get('value'))} ({v.get('reason')})" for k, v in auto.items() if isinstance(v, dict)) + "."]
    return lines + [""]


def _cell(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("value") is None:
        return "-"
    if cell.get("stderr") is not None:
        return f"{cell['value']:.4f} ± {cell['stderr']:.4f}"
    low_high = cell.get("ci95")
    return f"{cell['value']:.4f} [{low_high[0]:.4f}, {low_high[1]:.4f}]" if low_high else f"{cell['value']:.4f}"


def _evaluation(comparison: dict[str, Any] | None, stale: str | None, summary: dict[str, Any]) -> list[str]:
    lines = ["## Evaluation", ""]
    if comparison is None:
        return lines + [f"No comparison for these weights: {stale}." if stale else
                        "This run has no comparison (`tunelab run CONFIG` trains, evaluates base and tuned "
                        "variants on held-out questions and compares them).", ""]
    rows = [r for r in comparison.get("rows", []) if r.get("model") == summary.get("model")]
    metrics = list(comparison.get("metrics") or [])
    lines.append(f"Measured by `tunelab run` on {comparison.get('n')} held-out questions, base model against "
                 "this tuned model (with and without retrieved context where the experiment compared it). "
                 "± is the standard error of a mean metric; [low, high] a 95% bootstrap interval of a corpus metric.")
    lines += ["", "| variant | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += [f"| {r.get('variant')} | " + " | ".join(_cell((r.get("metrics") or {}).get(m)) for m in metrics) + " |"
              for r in rows]
    labels = {r.get("variant") for r in rows if r.get("kind") == "tuned"}
    contrasts = [c for c in comparison.get("contrasts", []) if c.get("better") in labels or c.get("worse") in labels]
    if contrasts:
        lines += ["", "Differences (the paired 95% interval of the per-question difference where there is one):", ""]
        for c in contrasts:
            interval = (f", 95% interval [{c['low']:.4f}, {c['high']:.4f}]"
                        if c.get("low") is not None and c.get("high") is not None else "")
            verdict = "beyond the uncertainty" if c.get("beyond_uncertainty") else "within the uncertainty"
            lines.append(f"- {c.get('question')}: {c.get('better')} over {c.get('worse')} on {c.get('metric')} by "
                         f"{c.get('delta', 0.0):.4f}{interval}, {verdict}")
    return lines + [""]


def _usage(kind: str, base: Any, where: str) -> list[str]:
    lines = ["## How to use it", ""]
    if where == _REPO_PLACEHOLDER:
        lines += [f"`{_REPO_PLACEHOLDER}` is this directory, or the Hub repo it was uploaded to.", ""]
    base_id = base.id if base.on_hub else "PATH_TO_BASE_MODEL"
    if kind == "adapter":
        lines += ["```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{base_id}")',
                  f'model = PeftModel.from_pretrained(base, "{where}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{where}")  # with the chat template used in training',
                  "```"]
    else:
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{where}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{where}")  # with the chat template used in training',
                  "```"]
    tl_base = _tunelab_name(base)
    lines += ["", "With tunelab (RUN is the run directory):", "", "```bash"]
    if kind == "adapter":
        lines += [f"tunelab eval --model {tl_base} --adapter RUN --data eval.jsonl",
                  "tunelab export merge RUN --out merged/        # a standalone model"]
    lines += ["tunelab export hub RUN --repo ORG/NAME", "```", ""]
    return lines


def _tunelab_name(base: Any) -> str:
    """How tunelab names the base: a bundled model's own name (it loads offline), else the public id."""
    from ..models.bundled import BUNDLED

    if not base.on_hub:
        return "PATH_TO_BASE_MODEL"
    return next((m.name for m in BUNDLED.values() if m.hf_id == base.id), base.id)


def _limitations(kind: str, base: Any, summary: dict[str, Any], comparison: dict[str, Any] | None) -> list[str]:
    stats = (summary.get("data") or {}).get("train") or {}
    examples = stats.get("examples")
    out = []
    if isinstance(examples, int) and examples < SMALL_TRAIN_SET:
        out.append(f"It was trained on {examples} examples: a small set, so expect it to know what those examples "
                   "teach and little beyond; check it on your own questions before relying on it.")
    if not (summary.get("data") or {}).get("validation"):
        out.append("No validation split was held out during training, so no validation loss tracked over-fitting.")
    if comparison is None:
        out.append("No held-out evaluation is recorded for these weights.")
    elif isinstance(comparison.get("n"), int) and comparison["n"] < SMALL_EVAL_SET:
        out.append(f"The evaluation used {comparison['n']} held-out questions; with so few, the intervals above "
                   "are wide and small differences are not evidence.")
    if base.quantized_from:
        out.append(f"The base weights it was trained on were converted from a {base.quantized_from} GGUF "
                   f"quantisation of {base.id} (dequantised to full precision), not from the original weights; "
                   "on the original weights it behaves close to, but not exactly as, measured here.")
    if not base.on_hub:
        out.append("The base is a local model with no public id; it is needed to use this "
                   + ("adapter." if kind == "adapter" else "card's numbers."))
    if kind == "merged":
        out.append("The numbers above were measured with the adapter on its base; the merged weights are their sum "
                   "(`tunelab export verify` checks that the two agree).")
    for warning in summary.get("warnings") or []:
        out.append(f"Training warned: {warning}")
    lines = ["## Limitations", ""] + [f"- {line}" for line in out]
    if base.licence and base.licence != "unknown":
        lines.append(f"- The base model's licence ({base.licence}) applies to this model too.")
    return lines + [""]


def _versions() -> list[str]:
    found = []
    for dist in ("tunelab", "peft", "transformers", "torch"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ["## Software", "", ", ".join(found) + "."] if found else []
