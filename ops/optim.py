"""Optimiser parameter groups with the release's (TSN's) lr / weight-decay multipliers."""
from typing import Dict, List

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
