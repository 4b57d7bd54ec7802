"""Hyperparameter search (`tunelab sweep`): Optuna's TPE over the `sweep:` section's space, trials trained
in this process on shared data, scored on a development split drawn from the training data (never the
evaluation set), pruned from intermediate values, each an MLflow child run; the best trial's config is
written as YAML that `tunelab train` and `tunelab run` take unchanged.

    from tunelab.sweep import run
    result = run(config, trials=20)            # SweepResult: best_value, best_params, best_config_path, ...

Modules: space (sampling and overrides), devsplit (the shared data and its development split), study
(storage, sampler, pruner), objective (one trial), report (pictures and table), run (the whole search).
"""

from .objective import SweepInterrupted
from .run import OUTPUT_KIND, SweepResult, objective_direction, run

__all__ = ["OUTPUT_KIND", "SweepInterrupted", "SweepResult", "objective_direction", "run"]
