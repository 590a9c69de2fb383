"""Epoch-wise learning-rate schedules and their application to the parameter groups."""
import math

LR_TYPES = ('step_lr', 'cos_lr', 'MAS_lr')
# MAS_lr: decay factors applied at its four steps (0.01 -> 1e-3 -> 1e-4 -> 5e-5 -> 1e-5)
MAS_LR_FACTORS = (0.1, 0.1, 0.5, 0.2)


def lr_at_epoch(lr_type, base_lr, epoch, lr_steps=(), epochs=None):
    """Learning rate of `epoch` (0-based) under schedule `lr_type`."""
    if lr_type == 'step_lr':
        return base_lr * 0.1 ** sum(epoch >= step for step in lr_steps)
    if lr_type == 'MAS_lr':
        if len(lr_steps) != len(MAS_LR_FACTORS):
            raise ValueError(f'--lr_steps: MAS_lr needs {len(MAS_LR_FACTORS)} steps, '
                             f'got {len(lr_steps)} ({" ".join(map(str, lr_steps))})')
        lr = base_lr
        for step, factor in zip(lr_steps, MAS_LR_FACTORS):
            if epoch >= step:
                lr *= factor
        return lr
    if lr_type == 'cos_lr':
        return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / epochs))
    raise ValueError(f"--lr_type: unknown schedule '{lr_type}' (choose from {', '.join(LR_TYPES)})")


def apply_lr(optimizer, lr, weight_decay):
    """Set every group's lr and weight decay to the base values times its multipliers."""
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_mult', 1)
        group['weight_decay'] = weight_decay * group.get('decay_mult', 1)
