"""`run(config)`: a training run from an experiment config to a run directory.

This module only dispatches: a config with `stages:` is handed to stages.run_stages (sequential
fine-tuning, one run per stage), any other to single.train_one; a config with `mixture:` trains on
several task datasets sampled by weight (mixture.py). Under a multi-process launcher the run is
data-parallel (distributed.py). What follows is one stage (setup.py builds its pieces, single.py runs it).

Order: prepare `config.data` into `<run_dir>/data` (reused while its options and inputs are unchanged)
-> load the tokenizer (the chat template override applied) -> render the train and validation splits
with the objective -> load the model for the method (4-bit for qlora) and adapt it -> train (or, for a
dry run, measure and plan) -> write the run directory:

    adapter_config.json + adapter_model.safetensors   (PEFT methods; PeftModel.from_pretrained(base, run_dir))
    config.json + model.safetensors                   (full; AutoModelForCausalLM.from_pretrained(run_dir))
    tokenizer files + chat_template.jinja             (the exact template training rendered with)
    config.resolved.yaml, train_log.jsonl, summary.json, checkpoints/, data/

Every file is written atomically. The CPU path: threads set to the physical cores, bf16 autocast only
where bf16 pays (avx512_bf16/AMX or a bf16 GPU), no DataLoader workers (they steal the cores), optional
regional torch.compile of the decoder layers. TUNELAB_THREADS overrides the thread count (on a machine
shared with other jobs, fewer threads than cores avoids OpenMP threads spinning against each other);
processes launched together on one machine share its cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from ..config import RUN_DIR_KIND, ExperimentConfig
from ..errors import TunelabError
from ..io import claim_output_dir
from .artifacts import save_artifacts, weights_digest
from .distributed import setup as setup_distributed
from .setup import TrainData, build_model, load_tokenizer_for, precision_for, prepare_data, prepare_dataset
from .single import Callback, TrainResult, train_one
from .stages import run_stages

__all__ = ["OUTPUT_KIND", "TrainResult", "build_model", "load_tokenizer_for", "precision_for", "prepare_data",
           "prepare_dataset", "run", "save_artifacts", "train_one", "weights_digest"]

OUTPUT_KIND = RUN_DIR_KIND  # the marker kind of a run directory: train, run, compare and synth share it


def run(config: ExperimentConfig, *, resume: bool = False, dry_run: bool = False,
        callback: Callback | None = None, progress: bool = True, data: TrainData | None = None,
        base_model: Any = None, stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train as the config says; see the module docstring for what is written where.

    resume: continue from the latest checkpoint (same config and data, else TunelabError); with stages,
    completed stages are skipped.
    dry_run: build everything, measure a couple of micro-batches, return the plan; nothing is trained.
    callback: receives every loop event (start, step, eval, eval_generate, checkpoint, end; with stages also
    stage) as a dict.
    data, base_model, stop: see train_one (a sweep's trial reuses the rendered data and the base model, and
    stops when pruned); only for a run without stages.
    """
    dist = setup_distributed(config.model.device)
    # rank 0 checks and marks the run directory; the others wait for it, so none writes into a folder
    # that is refused (and none sees rank 0's temporary marker file as a stranger's)
    with dist.main_first() if dist is not None else contextlib.nullcontext():
        if dist is None or dist.is_main:
            claim_output_dir(config.run_dir, OUTPUT_KIND)
    if config.stages:
        if data is not None or base_model is not None or stop is not None:
            raise TunelabError("data, base_model and stop are for a run without stages")
        return run_stages(config, resume=resume, dry_run=dry_run, callback=callback, progress=progress, dist=dist)
    return train_one(config, resume=resume, dry_run=dry_run, callback=callback, progress=progress, dist=dist,
                     data=data, base_model=base_model, stop=stop)
