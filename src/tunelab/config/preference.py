"""Config of the preference objectives (train.objective dpo or orpo): `train.preference`.

    train:
      objective: dpo
      preference: {beta: 0.1}          # dpo: strength of the pull towards the reference model
      # objective: orpo, preference: {orpo_lambda: 0.1}

tunelab.train.preference says what each setting does to the loss.
"""

from __future__ import annotations

from pydantic import Field

from .base import Section

PREFERENCE_OBJECTIVES = ("dpo", "orpo")


class PreferenceConfig(Section):
    beta: float = Field(0.1, gt=0, description="DPO's beta: the loss is -log sigmoid(beta * (chosen minus rejected "
                        "log-ratio against the reference)); larger keeps the model closer to the reference "
                        "(0.1 as in the DPO paper and TRL).")
    orpo_lambda: float = Field(0.1, gt=0, description="ORPO's lambda: weight of the odds-ratio term next to the "
                               "NLL of the chosen reply (0.1 as in the ORPO paper; TRL calls it beta).")
