"""The state of a run between steps: step, the task's module and extra state, the named optimisers,
the sampler and the RNG; capture into a Checkpoint, restore from one, and the checks that guard a
checkpoint (finite weights and optimiser state, DDP ranks that agree).

Restoring re-applies the config's optimiser hyper-parameters after loading the optimisers' state
(which carries the saved ones), with a warning naming each change, and refuses a changed world size.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from untwine.errors import CheckpointError, ConfigError, UntwineError
from untwine.train.checkpoint import Checkpoint, capture_torch_rng, restore_torch_rng


class NonFiniteLossError(UntwineError):
    """The loss, a gradient, a weight or the optimiser state became NaN or infinite; the run stopped,
    keeping its last good checkpoint."""


class RankMismatchError(UntwineError):
    """DDP ranks hold different weights: the run stopped before writing a checkpoint."""


class ResumeWarning(UserWarning):
    """A resumed run trains with hyper-parameters that differ from the checkpoint's."""


def data_seed(seed: int, rank: int) -> int:
    """A distinct sampler seed per rank, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def nonfinite_names(named: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating tensors holding NaN or infinity; one device sync."""
    named = [(k, v) for k, v in named if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(v).all() for _, v in named]).tolist()
    return [k for (k, _), ok in zip(named, finite) if not ok]


def gradients_finite(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """A 0-d bool tensor: every gradient finite (no device sync). Read from each gradient's sum (a NaN
    or an infinity anywhere makes it non-finite): an elementwise isfinite over every gradient cost
    more than the backward of an MLP VAE on the CPU (11 ms a step against 8), a sum a fraction of a
    millisecond. Only a sum beyond float32's range (gradients near 1e38 / size) reads as non-finite."""
    sums = [p.grad.sum() for p in params if p.grad is not None]
    return torch.isfinite(torch.stack(sums)).all() if sums else torch.ones((), dtype=torch.bool)


class TrainState:
    def __init__(self, cfg, task, optimizers: dict, groups: dict, sampler, fabric):
        self.cfg, self.task, self.optimizers, self.groups = cfg, task, optimizers, groups
        self.sampler, self.fabric = sampler, fabric
        scaler = getattr(fabric.strategy.precision, "scaler", None)   # fp16 mixed precision's GradScaler
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None

    # -- checks ---------------------------------------------------------------------------------
    def nonfinite_weights(self) -> list[str]:
        named = [(f"model.{k}", v) for k, v in self.task.model.state_dict().items()]
        named += [(f"objective.{k}", v) for k, v in self.task.extra_tensors().items()]
        return nonfinite_names(named)

    def nonfinite_optimizer_state(self) -> list[str]:
        named = []
        for name, opt in self.optimizers.items():
            for pid, pstate in opt.state_dict()["state"].items():
                named += [(f"{name}.state.{pid}.{k}", v) for k, v in pstate.items()]
        return nonfinite_names(named)

    def check_ranks_agree(self, step: int) -> None:
        """Every rank's weights against rank 0's: a checksum (sum and sum of squares in float64) per tensor."""
        fabric = self.fabric
        if fabric.world_size == 1:
            return
        named = [(k, v) for k, v in self.task.module.state_dict().items() if v.is_floating_point()]
        sums = torch.stack([torch.stack([v.double().sum(), v.double().square().sum()]) for _, v in named])
        gathered = fabric.all_gather(sums)  # (world, tensors, 2)
        differ = [(r, i) for r in range(1, gathered.shape[0]) for i in range(len(named))
                  if not torch.equal(gathered[0, i], gathered[r, i])]
        if differ:
            names = sorted({named[i][0] for _, i in differ})
            raise RankMismatchError(
                f"DDP ranks disagree at step {step}: rank(s) {sorted({r for r, _ in differ})} hold weights that differ "
                f"from rank 0's in {len(names)} tensor(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); "
                f"the checkpoint of step {step} was not written. Every rank must run the same steps on the same "
                f"weights (one backward of the summed losses, every optimiser stepping on all-reduced gradients)")

    # -- capture and restore --------------------------------------------------------------------
    def capture(self, step: int) -> Checkpoint:
        return Checkpoint(step=step, model=self.task.model.state_dict(),
                          optimizers={name: opt.state_dict() for name, opt in self.optimizers.items()},
                          aux=self.task.extra_tensors(), controller=self.task.state_dict(),
                          sampler=self.sampler.state_dict(), rng=self.capture_rng(),
                          extra={"world_size": self.fabric.world_size,
                                 **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {})})

    def restore(self, ckpt: Checkpoint, run_dir) -> int:
        saved_world = int(ckpt.extra.get("world_size", 1))
        if saved_world != self.fabric.world_size:
            raise ConfigError(
                f"the run in {run_dir} was trained on {saved_world} process(es) and this resume has "
                f"{self.fabric.world_size}: each rank draws its own batches (optim.batch_size each, "
                f"{self.cfg.optim.batch_size * saved_world} images a step in all) from its own saved random "
                f"state, so no other number of processes continues the same run. Resume with the run's trainer.devices and "
                f"trainer.num_nodes ({saved_world} processes in all), or start a new run from its weights")
        try:
            self.task.model.load_state_dict(ckpt.model)
            self.task.load_extra_tensors(ckpt.aux)
            for name, opt in self.optimizers.items():
                if name not in ckpt.optimizers:
                    raise KeyError(f"{name} optimizer state")
                opt.load_state_dict(ckpt.optimizers[name])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"the checkpoint in {run_dir}/checkpoints does not fit the model of the config "
                                  f"({e}); resume with the run's own config.yaml (model and objective settings "
                                  f"unchanged)") from e
        self.task.load_state_dict(ckpt.controller)
        if self.scaler is not None and "grad_scaler" in ckpt.extra:
            self.scaler.load_state_dict(ckpt.extra["grad_scaler"])
        self.reapply_hyper_parameters()
        self.sampler.load_state_dict(dict(ckpt.sampler or {}, seed=self.sampler.seed, step=ckpt.step))
        self.restore_rng(ckpt.rng, ckpt.step)
        return ckpt.step

    # Every rank draws its own noise (the reparameterisation, dropout), so an exact DDP resume needs
    # every rank's generators: rank r's are saved as "<name>@rank<r>", rank 0's also under the plain
    # names (a checkpoint a single process can read).
    def capture_rng(self) -> dict[str, torch.Tensor]:
        states = capture_torch_rng()
        if self.fabric.world_size == 1:
            return states
        out = dict(states)
        for name, state in states.items():
            gathered = self.fabric.all_gather(state.to(self.fabric.device)).cpu()  # (world, bytes)
            out.update({f"{name}@rank{r}": gathered[r].clone() for r in range(gathered.shape[0])})
        return out

    def restore_rng(self, states: dict[str, torch.Tensor], step: int) -> None:
        rank, world = self.fabric.global_rank, self.fabric.world_size
        if world == 1:
            restore_torch_rng({k: v for k, v in states.items() if "@rank" not in k})
            return
        own = {k.rsplit("@rank", 1)[0]: v for k, v in states.items() if k.endswith(f"@rank{rank}")}
        if own:
            restore_torch_rng(own)
        else:  # a checkpoint from before every rank's state was saved: a fresh, distinct stream per rank
            torch.manual_seed(data_seed(self.cfg.trainer.seed + step, rank))

    def reapply_hyper_parameters(self) -> list[str]:
        """The config's learning rates and betas over the ones the optimiser state carried; warns per change."""
        changes = []
        for name, opt in self.optimizers.items():
            group = self.groups[name]
            want = group.hyper_parameters()
            for pg in opt.param_groups:
                for key, value in want.items():
                    old = tuple(pg[key]) if isinstance(pg.get(key), (list, tuple)) else pg.get(key)
                    if old != value:
                        label = group.lr_key if key == "lr" else f"{group.lr_key.rsplit('lr', 1)[0]}betas"
                        changes.append(f"{label}: {old} in the checkpoint, {value} now")
                    pg[key] = value
        for change in dict.fromkeys(changes):
            warnings.warn(f"resuming with a changed hyper-parameter, {change}", ResumeWarning, stacklevel=2)
        return changes
