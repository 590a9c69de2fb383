"""The temporal module types a ResNet backbone can carry, one entry each (``--type``).

A type is a pair of block classes (archs.resnet's BasicBlock / Bottleneck with their hooks
overridden) and, for FLOP counting, the multiply-adds of its modules that fvcore cannot see
(operations it does not count, e.g. TIM's depthwise temporal conv computed as adds). A new
temporal module is one file with its blocks plus one entry in ``TEMPORAL_MODULES``.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict

import torch.nn as nn

from archs.resnet import PLAIN_BLOCKS, build_resnet
from ops.MASNet import MAS_BLOCKS
from ops.MASNet import UNCOUNTED_MACS as MAS_UNCOUNTED_MACS
from ops.temporal_shift import TSM_BLOCKS


@dataclass(frozen=True)
class TemporalModule:
    """blocks: ``{'basic': cls, 'bottleneck': cls}``; uncounted_macs: ``{module class:
    fn(module, input shape) -> multiply-adds fvcore misses in one call of that module}``."""
    blocks: Dict[str, type]
    uncounted_macs: Dict[type, Callable] = field(default_factory=dict)


TEMPORAL_MODULES = {
    'MASNet': TemporalModule(MAS_BLOCKS, MAS_UNCOUNTED_MACS),
    'TSM': TemporalModule(TSM_BLOCKS),
    'TSN': TemporalModule(PLAIN_BLOCKS),
}
TEMPORAL_TYPES = tuple(TEMPORAL_MODULES)


def temporal_module(temporal_type: str) -> TemporalModule:
    if temporal_type not in TEMPORAL_MODULES:
        raise ValueError(f"unknown --type '{temporal_type}' "
                         f"(choose from {', '.join(TEMPORAL_TYPES)})")
    return TEMPORAL_MODULES[temporal_type]


def build_backbone(arch: str, temporal_type: str, num_segments: int) -> nn.Module:
    """ResNet `arch` with the blocks of `temporal_type` ('MASNet', 'TSM' or 'TSN')."""
    return build_resnet(arch, temporal_module(temporal_type).blocks, num_segments=num_segments)
