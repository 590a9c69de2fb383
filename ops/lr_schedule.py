"""Learning-rate schedules, each a function of the fractional epoch (epoch + fraction of its
clips done), and their application to the parameter groups.

The training loop sets the lr before every optimiser step from ``lr_at_epoch(..., epoch + i /
iterations)``. The release's schedules (step_lr, cos_lr, MAS_lr, --warmup) change at epoch
boundaries only: they read the epoch's integer part, so their lr is constant within an epoch,
as the release's. A new schedule is one function registered under its name (the --lr_type
choices are this registry); it may use the fraction, e.g. a per-iteration warm-up or a
polynomial decay (docs/training.md shows the steps).
"""
import math
from typing import Callable, Dict, Optional, Sequence

import torch

# --lr_type name -> schedule(epoch: float, base_lr, lr_steps, epochs) -> lr (the --lr_type
# choices, in this order)
LR_SCHEDULES: Dict[str, Callable[..., float]] = {}
# MAS_lr: decay factors applied at its four steps (0.01 -> 1e-3 -> 1e-4 -> 5e-5 -> 1e-5)
MAS_LR_FACTORS = (0.1, 0.1, 0.5, 0.2)


def lr_schedule(name):
    """Register the decorated function as the schedule --lr_type `name`."""
    def register(schedule):
        LR_SCHEDULES[name] = schedule
        return schedule
    return register


@lr_schedule('step_lr')
def step_lr(epoch, base_lr, lr_steps, epochs):
    """x0.1 at each of the steps the epoch has reached."""
    whole = math.floor(epoch)
    return base_lr * 0.1 ** sum(whole >= step for step in lr_steps)


@lr_schedule('cos_lr')
def cos_lr(epoch, base_lr, lr_steps, epochs):
    """Half a cosine from base_lr at epoch 0 towards 0 at `epochs`, stepped per epoch."""
    return 0.5 * base_lr * (1 + math.cos(math.pi * math.floor(epoch) / epochs))


@lr_schedule('MAS_lr')
def mas_lr(epoch, base_lr, lr_steps, epochs):
    """x0.1, x0.1, x0.5, x0.2 at four steps; other step counts decay as step_lr (the release's
    fallback, used by its 3-step recipes)."""
    if mas_lr_falls_back('MAS_lr', lr_steps):
        return step_lr(epoch, base_lr, lr_steps, epochs)
    whole, lr = math.floor(epoch), base_lr
    for step, factor in zip(lr_steps, MAS_LR_FACTORS):
        if whole >= step:
            lr *= factor
    return lr


def lr_at_epoch(lr_type: str, base_lr: float, epoch: float, lr_steps: Sequence[float] = (),
                epochs: Optional[int] = None, warmup: int = 0) -> float:
    """Learning rate at the fractional `epoch` (0-based; 2.5: half of epoch 2 done) under
    schedule `lr_type`.

    With ``warmup`` N > 0 epoch e < N runs at base_lr * (e + 1) / N instead of the schedule,
    whatever ``lr_type`` (the release's main.py, commit b742cba); later epochs follow the
    schedule at their own epoch number, not shifted by N.
    """
    if lr_type not in LR_SCHEDULES:
        raise ValueError(f"--lr_type: unknown schedule '{lr_type}' (choose from "
                         f"{', '.join(LR_SCHEDULES)})")
    whole = math.floor(epoch)
    if whole < warmup:
        return base_lr * (whole + 1) / warmup
    return LR_SCHEDULES[lr_type](epoch, base_lr, lr_steps, epochs)


def mas_lr_falls_back(lr_type: str, lr_steps: Sequence[float]) -> bool:
    """True when MAS_lr is asked with a step count it treats as step_lr."""
    return lr_type == 'MAS_lr' and len(lr_steps) != len(MAS_LR_FACTORS)


def apply_lr(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set every group's lr and weight decay to the base values times its multipliers."""
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_mult', 1)
        group['weight_decay'] = weight_decay * group.get('decay_mult', 1)
