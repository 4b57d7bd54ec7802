"""One trial of a sweep: sample the settings, train in this process, report intermediate values, score.

A trial's config is the experiment's config with the sampled values applied as `key=value` overrides
(tunelab.config), written to <run_dir>/sweep/trials/<study>/trial-NNNN like any training run. It trains on
the sweep's shared data (devsplit.py: prepared and rendered once) and, for the LoRA family, on the base
model the previous trial used: PEFT's unload() takes the trained adapter out and leaves the pristine
base, so only the first trial loads weights (build_model seeds before adapting, so the result is the same
as in a fresh process).

Intermediate values go to Optuna as training reports them: val_loss at each validation (train.eval_every,
default each epoch); rougeL from the loop's generation eval (train.eval_generate_every, set to the
validation interval when not given). Other generation metrics report only their final value, so the
pruner cannot stop those trials early. When the pruner says stop, the loop is asked to stop after that
step (train.run's `stop`), which it does like a Ctrl-C: a checkpoint, then a clean return.

The final objective: val_loss is the last validation loss (the best one when early stopping restores
the best weights); a generation metric is scored on every development record, answered greedily with
eval.max_new_tokens. Every trial is an MLflow child run of the sweep's run: the sampled params, the step
metrics and intermediate objective values, the final objective, and the tag tunelab.trial_state
(complete | pruned).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..errors import TunelabError
from ..io import write_json
from . import space
from .devsplit import DevSplit

STATE_TAG = "tunelab.trial_state"


class SweepInterrupted(TunelabError):
    """Ctrl-C during a trial: the trial is recorded as failed; `tunelab sweep --resume` continues the study."""

    exit_code = 130


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).lstrip(".") or "study"


class BaseModels:
    """The base model trials share: handed to one trial at a time, taken back without its adapter.

    Only the LoRA family gives its base back unchanged (unload() removes the injected layers); full
    fine-tuning changes the base weights and prompt/prefix/IA3 adapters are not unloaded here, so those
    trials load the base afresh. The key holds what load_base_model depends on."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._model: Any = None
        self.loads_saved = 0

    @staticmethod
    def _key_of(config: ExperimentConfig) -> str | None:
        from ..train.methods import get_method

        method = get_method(config.method.name)
        if not method.lora_family:
            return None
        return f"{config.model.model_dump_json()}|{method.quantized}|{method.auto_dtype}"

    def take(self, config: ExperimentConfig) -> Any:
        """The cached base for this config, or None (train.run then loads it)."""
        key = self._key_of(config)
        model, self._model = self._model, None  # a trial that fails leaves nothing half-adapted behind
        if key is not None and key == self._key and model is not None:
            self.loads_saved += 1
            return model
        return None

    def give_back(self, config: ExperimentConfig, trained: Any) -> None:
        key = self._key_of(config)
        if key is None or trained is None or not hasattr(trained, "unload"):
            return
        self._key, self._model = key, trained.unload()


@dataclass
class _Reporter:
    """The training callback that reports intermediate objective values to the trial and asks it whether
    to prune; `stop` is what the loop asks after every step."""

    trial: Any
    metric: str
    run: Any
    reported: list[tuple[int, float]] = field(default_factory=list)
    pruned_at: int | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if (kind == "eval" and self.metric == "val_loss") or (kind == "eval_generate" and self.metric in event):
            step, value = int(event["step"]), float(event[self.metric])
            if any(s == step for s, _ in self.reported):
                return  # one value per step (Optuna keeps the first)
            self.trial.report(value, step)
            self.reported.append((step, value))
            self.run.log_metrics({"objective_intermediate": value}, step=step)
            if self.pruned_at is None and self.trial.should_prune():
                self.pruned_at = step

    def stop(self) -> bool:
        return self.pruned_at is not None


def intermediate_every(config: ExperimentConfig, n_train: int) -> int:
    """Steps between intermediate values: train.eval_every, else one epoch's steps."""
    from ..train.loop import count_steps

    return config.train.eval_every or count_steps(n_train, config.train)[0]


def dev_score(model: Any, tokenizer: Any, config: ExperimentConfig, records: list, metric: str) -> float:
    """A generation metric of the trained model's answers to every development record."""
    import torch

    from ..train.gen_eval import make_generate_eval

    score = make_generate_eval(model, tokenizer, records, len(records), config.eval.max_new_tokens,
                               torch.get_num_threads(), metric=metric, batch_size=config.eval.batch_size)()
    return float(score[metric])


def _tidy(run_dir: Path, state: str) -> None:
    """A trial is never resumed: its checkpoints go (they only serve resuming, and a pruned trial's would
    make the directory look like an interrupted run), and its summary says how it ended."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        import json

        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        summary["trial_state"] = state
        if state == "pruned":
            summary["status"] = "pruned"
        write_json(summary_file, summary)


@dataclass
class Objective:
    """The function Optuna calls for each trial (see the module docstring)."""

    config: ExperimentConfig
    dev: DevSplit
    tokenizer: Any
    metric: str
    tracker: Any
    parent_id: str | None
    trials_dir: Path
    progress: bool = False
    bases: BaseModels = field(default_factory=BaseModels)
    on_trial: Any = None  # called with each finished trial's summary dict

    def trial_config(self, number: int, values: dict[str, Any]) -> ExperimentConfig:
        config = space.apply(self.config, values, name=f"trial-{number:04d}", workdir=str(self.trials_dir))
        if self.metric == "rougeL" and config.train.eval_generate_every is None:
            config.train.eval_generate_every = intermediate_every(config, len(self.dev.data.train))
        return config

    def __call__(self, trial: Any) -> float:
        import optuna

        from ..track import step_callback
        from ..train.run import run as train_run

        assert self.config.sweep is not None
        values = space.sample(trial, self.config.sweep.space)
        config = self.trial_config(trial.number, values)
        trial.set_user_attr("run_dir", str(config.run_dir))
        tags = {"tunelab.sweep.trial": trial.number, "tunelab.sweep.study": trial.study.study_name}
        value: float | None = None
        with self.tracker.run("trial", name=f"trial {trial.number}", params=values, tags=tags,
                              parent=self.parent_id, log_config=False) as tr:
            tr.log_dict(config.resolved(), "config.resolved.yaml")
            reporter = _Reporter(trial, self.metric, tr)
            logger = step_callback(tr)

            def both(event: dict[str, Any]) -> None:
                logger(event)
                reporter(event)

            result = train_run(config, callback=both, progress=self.progress, data=self.dev.data,
                               base_model=self.bases.take(config), stop=reporter.stop)
            logger.flush()
            if reporter.pruned_at is not None:
                state = "pruned"
            elif result.status == "interrupted":
                tr.status = "KILLED"
                state = "interrupted"
            else:
                state = "complete"
                if self.metric == "val_loss":
                    # the patience the run used: the trial's own, or the one auto chose (train/auto.py)
                    chosen = (result.summary.get("auto") or {}).get("train.early_stopping_patience", {})
                    patience = chosen.get("value", config.train.early_stopping_patience)
                    early = patience not in (None, "auto")
                    value = result.summary.get("best_val_loss" if early else "final_val_loss")
                else:
                    value = dev_score(result.model, self.tokenizer, config, self.dev.dev_records, self.metric)
                if value is None:
                    raise TunelabError(f"trial {trial.number} gave no {self.metric} (no development examples?)")
                tr.log_metrics({"objective": value})
            tr.set_tags({STATE_TAG: state})
            with contextlib.suppress(Exception):  # a base that cannot be unloaded is simply loaded again
                self.bases.give_back(config, result.model)
            result.model = None
        _tidy(Path(config.run_dir), state)
        if self.on_trial is not None:
            self.on_trial({"number": trial.number, "state": state, "value": value, "params": values,
                           "pruned_at_step": reporter.pruned_at})
        if state == "interrupted":
            # Optuna fails the trial; its settings go back in the queue so `--resume` measures them first
            trial.study.enqueue_trial(trial.params)
            raise SweepInterrupted("the sweep was interrupted; `tunelab sweep --resume` continues the study")
        if state == "pruned":
            raise optuna.TrialPruned(f"pruned at step {reporter.pruned_at}")
        assert value is not None
        return float(value)
