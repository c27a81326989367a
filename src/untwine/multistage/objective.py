"""The objective the engine drives for every stage-2 variant: it hands the batch to the combined
model, which computes y = g1(z) with stage 1 frozen and asks its stage 2 for the loss."""
from __future__ import annotations

import torch

from untwine.errors import ConfigError
from untwine.objectives.base import Objective, ObjectiveOutput


class MultiStageObjective(Objective):
    name = "multistage"
    kl_weight = "the weight of stage 2's KL(q(w|x,y) || p(w)) (variants with a KL: vae, gan)"

    def forward(self, model, x: torch.Tensor, beta: float | None = None, step: int = 0) -> ObjectiveOutput:
        if not hasattr(model, "stage2_loss"):
            raise ConfigError("objective 'multistage' trains the stage 2 of a MultiStageModel; this model is a "
                              f"{type(model).__name__}: set stage1=RUN_DIR and stage2.name")
        return model.stage2_loss(x, beta=beta, step=step)
