"""Generation evaluation during training (train.eval_generate_every): a cheap look at real answers.

Every N steps the model answers the first `train.eval_generate_n` validation examples that have a
reference answer (greedy, at most `train.eval_generate_max_new_tokens` new tokens, with the batched
engine tunelab.models.generate.Generator) and the answers are scored with ROUGE-L (rouge-score F-measure,
mean over the examples, stemming on: tunelab.evaluate.metrics). The result is a row of the train log:

    {"event": "eval_generate", "step": 40, "rougeL": 0.41, "n": 16, "seconds": 3.2}

It is off by default: decoding token by token costs far more than a validation-loss pass, which is why
it runs on a small fixed sample. Under several processes only rank 0 generates (the others wait at the
next collective).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from ..data.records import Record
from ..errors import TunelabError


def pick_examples(records: Sequence[Record], n: int) -> tuple[list[Any], list[str]]:
    """The first n records that have a prompt and a reference answer (chat and label records)."""
    from ..evaluate.runner import example_of

    prompts: list[Any] = []
    refs: list[str] = []
    for record in records:
        prompt, ref, problem = example_of(record)
        if problem is None:
            prompts.append(prompt)
            refs.append(ref)  # type: ignore[arg-type]
        if len(prompts) == n:
            break
    return prompts, refs


def make_generate_eval(model, tokenizer, records: Sequence[Record], n: int, max_new_tokens: int,
                       threads: int, metric: str = "rougeL", batch_size: int = 16) -> Callable[[], dict[str, Any]]:
    """A function that generates answers for the sample and returns {metric, "n", "seconds"} (a sweep
    scores its development split with any generation metric of tunelab.evaluate.metrics this way)."""
    from ..evaluate.metrics import MetricInputs, compute
    from ..models.generate import GenerationConfig, Generator

    prompts, refs = pick_examples(records, n)
    if not prompts:
        raise TunelabError("train.eval_generate_every needs validation examples with a reference answer (chat "
                           "records ending with the assistant's reply); the validation split has none")
    chat = bool(getattr(tokenizer, "chat_template", None))
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=min(batch_size, len(prompts)))

    def run() -> dict[str, Any]:
        started = time.perf_counter()
        generator = Generator(model, tokenizer, chat_template=chat, threads=threads)
        outputs = generator.generate(prompts, cfg)
        value = compute([metric], MetricInputs([o.text for o in outputs], list(refs)))[metric]
        return {metric: value.value, "n": value.n, "seconds": round(time.perf_counter() - started, 3)}

    return run
