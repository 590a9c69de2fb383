"""The optimiser's side of the recipe: SGD parameter groups with the release's (TSN's) lr /
weight-decay multipliers, and the learning-rate schedules set on them.

A schedule is a function of the fractional epoch (epoch + fraction of its iterations done):
the training loop sets the lr before every optimiser step from ``lr_at_epoch(..., epoch + i /
iterations)``. The release's schedules (step_lr, cos_lr, MAS_lr, --warmup) change at epoch
boundaries only: they read the epoch's integer part, so their lr is constant within an epoch,
as the release's. A new schedule is one function registered under its name (the --lr_type
choices are this registry); it may use the fraction, e.g. a per-iteration warm-up or a
polynomial decay (docs/training.md shows the steps).
"""
import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

# group name -> (lr multiplier, weight-decay multiplier)
GROUP_MULTIPLIERS = {'first_conv_weight': (1, 1), 'first_conv_bias': (2, 0),
                     'normal_weight': (1, 1), 'normal_bias': (2, 0), 'bn': (1, 0)}


def optim_policies(model: nn.Module) -> List[Dict]:
    """SGD parameter groups of `model`.

    first conv weight (1, 1), first conv bias (2, 0), other conv/linear weights (1, 1),
    their biases (2, 0), BatchNorm 1d/2d/3d affine parameters (1, 0). Every parameter is in
    exactly one group; a parameterised module of another type is an error.
    """
    groups = {name: [] for name in GROUP_MULTIPLIERS}
    first_conv_seen = False
    for name, module in model.named_modules():
        params = list(module.parameters(recurse=False))
        if not params:
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            is_first = isinstance(module, nn.Conv2d) and not first_conv_seen
            first_conv_seen = first_conv_seen or is_first
            prefix = 'first_conv' if is_first else 'normal'
            groups[prefix + '_weight'].append(module.weight)
            if module.bias is not None:
                groups[prefix + '_bias'].append(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            groups['bn'].extend(params)
        else:
            raise ValueError(f"get_optim_policies: no lr policy for module '{name}' of "
                             f"type {type(module).__name__} with parameters")
    return [{'params': groups[name], 'lr_mult': lr, 'decay_mult': decay, 'name': name}
            for name, (lr, decay) in GROUP_MULTIPLIERS.items()]

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
