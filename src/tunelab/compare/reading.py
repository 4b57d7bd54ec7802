"""A short plain-language reading of a comparison: which variant wins on which metric, by how much,
whether the difference is larger than its uncertainty, and at what cost. Every sentence is derived
from the numbers in the table; nothing is asserted that the numbers do not show."""

from __future__ import annotations

from typing import Any

from .comparison import Comparison, Contrast, fmt


def _signed(c: Contrast) -> str:
    interval = f" (95% interval {fmt(c.low)} to {fmt(c.high)})" if c.low is not None else ""
    return f"+{fmt(c.delta)}{interval}"


def _verdict(c: Contrast) -> str:
    if c.beyond_uncertainty:
        return "larger than its uncertainty"
    return "within its uncertainty, so no clear difference"


def _best(comparison: Comparison, metric: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    rows = [r for r in comparison.rows if (r["metrics"].get(metric) or {}).get("value") is not None]
    if not rows:
        return None
    higher = rows[0]["metrics"][metric].get("higher_is_better", True)
    best = max(rows, key=lambda r: r["metrics"][metric]["value"] * (1 if higher else -1))
    return best, best["metrics"][metric]


def read_comparison(comparison: Comparison) -> list[str]:
    out: list[str] = []
    for metric in comparison.metrics:
        found = _best(comparison, metric)
        if found is not None:
            row, cell = found
            out.append(f"Best on {metric}: {row['variant']} ({fmt(cell['value'])}).")
    questions: dict[str, list[Contrast]] = {}
    for c in comparison.contrasts:
        questions.setdefault(f"{c.question}|{sorted([c.better, c.worse])}", []).append(c)
    for group in questions.values():
        head = next((c for c in group if c.metric == comparison.primary), group[0])
        others = [c for c in group if c is not head]
        question = head.question[:1].upper() + head.question[1:]  # not capitalize(): it would lower "RAG"
        sentence = (f"{question}: {head.better} beats {head.worse} on {head.metric} by "
                    f"{_signed(head)}, {_verdict(head)}.")
        if others:
            parts = [f"{c.metric} {'favours' if c.better == head.better else 'goes the other way, favouring'} "
                     f"{c.better} by {fmt(c.delta)}{'' if c.beyond_uncertainty else ' (within uncertainty)'}"
                     for c in others]
            sentence += " Also: " + "; ".join(parts) + "."
        out.append(sentence)
    out += tune_sentences(comparison)
    out += rag_context_sentences(comparison)
    out += _cost_sentences(comparison)
    if comparison.retrieval:
        r = comparison.retrieval
        recall = {k: v for k, v in r.items() if k.startswith("recall@")}
        if recall:
            parts = ", ".join(f"{k} {fmt(_value(v), 3)}" for k, v in recall.items())
            out.append(f"Retrieval quality (gold = the question's source document): {parts}, "
                       f"MRR {fmt(_value(r.get('mrr')), 3)}.")
    return out


def settings_text(values: dict[str, Any]) -> str:
    """Searched settings as `train.lr=0.0003, method.r=16` (floats to 4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def tune_sentences(comparison: Comparison) -> list[str]:
    """How each searched tuned variant got its settings (compare.tune): the search's size, its objective
    and where it was measured, the best development value and the settings it chose."""
    out = []
    for row in comparison.rows:
        tune = row.get("tune")
        if not tune or row["rag"]:
            continue
        dev = tune.get("dev") or {}
        split = (f"{dev['dev_records']} development records held out of the training data ({dev.get('source')})"
                 if dev.get("dev_records") else "a development split of the training data")
        goal = "maximising" if tune.get("direction") == "maximize" else "minimising"
        out.append(f"How {row['variant']} was chosen: a search of {tune['trials']} trials ({tune['complete']} "
                   f"complete, {tune['pruned']} pruned), {goal} {tune['metric']} on {split}, never on the "
                   f"eval set; best development {tune['metric']} {fmt(tune['best_value'])} (trial "
                   f"{tune['best_trial']}), with {settings_text(tune['best_params'])}.")
    return out


def rag_context_sentences(comparison: Comparison) -> list[str]:
    """How each RAG-aware variant's training examples were rendered: the mix drawn and how often the gold
    passage was retrieved, forced in and in the prompt (its training manifest, compare.ragaware)."""
    out = []
    for row in comparison.rows:
        ctx = (row.get("train") or {}).get("rag_context")
        if not ctx or row["rag"]:
            continue
        counts = ctx.get("counts") or {}
        mix = ", ".join(f"{n} {mode.replace('_', ' ')}" for mode, n in counts.items())
        gold = (f"the gold passage was among the top {ctx.get('top_k')} retrieved for {ctx.get('gold_retrieved')} "
                f"of the {ctx.get('gold_known')} examples whose gold is known, forced in for {ctx.get('gold_forced')}, "
                f"and in {ctx.get('gold_in_prompt')} gold-with-distractors prompts"
                if ctx.get("gold_known") else "the gold passage is known for no example, so retrieval decided")
        out.append(f"How {row['variant']} was trained: {ctx.get('examples')} examples with retrieved passages "
                   f"in the inference-time RAG prompt ({ctx.get('prompt_version')}): {mix}; {gold}.")
    return out


def _value(v: Any) -> Any:
    return v.get("value") if isinstance(v, dict) else v


def _cost_sentences(comparison: Comparison) -> list[str]:
    out = []
    by = {(r["model"], r["kind"], r["rag"]): r for r in comparison.rows}
    for (model, kind, rag), row in by.items():
        train = row.get("train")
        if kind != "base" and not rag and train and train.get("train_seconds") is not None:
            out.append(f"Cost of {row['variant']}: {fmt(train['train_seconds'], 1)} s of training at "
                       f"{fmt(train.get('tokens_per_s'), 1)} tokens/s, peak memory {fmt(train.get('peak_rss_mb'), 0)} MB; "
                       f"answers average {fmt(row.get('tokens_per_answer'), 1)} tokens "
                       f"(p50 latency {fmt(row.get('latency_p50_s'), 3)} s).")
        if rag and (model, kind, False) in by:
            plain = by[(model, kind, False)]
            p_rag, p_plain = row.get("prompt_tokens_mean"), plain.get("prompt_tokens_mean")
            if p_rag and p_plain:
                out.append(f"Retrieval for {plain['variant']} makes prompts {p_rag / p_plain:.1f}x longer "
                           f"({fmt(p_plain, 0)} -> {fmt(p_rag, 0)} tokens) and moves p50 latency from "
                           f"{fmt(plain.get('latency_p50_s'), 3)} s to {fmt(row.get('latency_p50_s'), 3)} s.")
    return out
