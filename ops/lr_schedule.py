"""Epoch-wise learning-rate schedules and their application to the parameter groups."""
import math
from typing import Optional, Sequence

import torch

LR_TYPES = ('step_lr', 'cos_lr', 'MAS_lr')
# MAS_lr: decay factors applied at its four steps (0.01 -> 1e-3 -> 1e-4 -> 5e-5 -> 1e-5)
MAS_LR_FACTORS = (0.1, 0.1, 0.5, 0.2)


def lr_at_epoch(lr_type: str, base_lr: float, epoch: int, lr_steps: Sequence[float] = (),
                epochs: Optional[int] = None, warmup: int = 0) -> float:
    """Learning rate of `epoch` (0-based) under schedule `lr_type`.

    MAS_lr with other than four steps decays x0.1 at each step, as step_lr (the release's
    fallback, used by its 3-step recipes). With ``warmup`` N > 0 epoch e < N runs at
    base_lr * (e + 1) / N instead of the schedule, whatever ``lr_type`` (the release's
    main.py, commit b742cba); later epochs follow the schedule at their own epoch number,
    not shifted by N.
    """
    if epoch < warmup:
        return base_lr * (epoch + 1) / warmup
    return _scheduled_lr(lr_type, base_lr, epoch, lr_steps, epochs)


def mas_lr_falls_back(lr_type: str, lr_steps: Sequence[float]) -> bool:
    """True when MAS_lr is asked with a step count it treats as step_lr."""
    return lr_type == 'MAS_lr' and len(lr_steps) != len(MAS_LR_FACTORS)


def _scheduled_lr(lr_type, base_lr, epoch, lr_steps, epochs):
    if lr_type == 'step_lr' or mas_lr_falls_back(lr_type, lr_steps):
        return base_lr * 0.1 ** sum(epoch >= step for step in lr_steps)
    if lr_type == 'MAS_lr':
        lr = base_lr
        for step, factor in zip(lr_steps, MAS_LR_FACTORS):
            if epoch >= step:
                lr *= factor
        return lr
    if lr_type == 'cos_lr':
        return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"--lr_type: unknown schedule '{lr_type}' (choose from {', '.join(LR_TYPES)})")


def apply_lr(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set every group's lr and weight decay to the base values times its multipliers."""
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_mult', 1)
        group['weight_decay'] = weight_decay * group.get('decay_mult', 1)
