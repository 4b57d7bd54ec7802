"""Training: instruction (sft) and causal fine-tuning with full, LoRA, DoRA, QLoRA, IA3, prompt and prefix
tuning; packing, token-normalised gradient accumulation, checkpoints with exact resume; sequential
stages (stages.py), multi-task mixtures (mixture.py), raw documents as data (documents.py), several
processes or GPUs through accelerate/torchrun with DDP or FSDP (distributed.py), ROUGE-L of generated
answers during training (gen_eval.py).

`run(config)` trains into `<workdir>/<name>/` (each stage of a staged config in `stages/<i>-<name>/`):
run.py dispatches to stages.py or to one run (single.py, built from setup.py's data, tokenizer and
model); methods and objectives are registries picked by name (`METHODS`, `OBJECTIVES`), a method's
entry holding every fact about it; the loop itself (`loop.run_loop`) takes already-rendered examples.
"""

from .methods import METHODS, get_method
from .objectives import OBJECTIVES, get_objective
from .plan import format_plan
from .run import TrainResult, run

__all__ = ["METHODS", "OBJECTIVES", "TrainResult", "format_plan", "get_method", "get_objective", "run"]
