"""The registry of temporal types a ResNet backbone can carry (``--type``): one entry each.

A type is a pair of block classes (archs.resnet's BasicBlock / Bottleneck with their hooks
overridden), a few words for ``--type``'s help and, for FLOP counting, the multiply-adds of its
modules that fvcore cannot see (e.g. TIM's depthwise temporal conv computed as adds).

Everything that lists the types reads this registry when it runs: ``--type``'s choices and help
(opts.py), the torch.hub entry points (hubconf.py), tools/flops.py, tools/bench_export.py,
tools/ablation_table.py and the tests. A new temporal module is one file with its blocks plus
one entry in ``TEMPORAL_MODULES`` (or a ``register_temporal_type`` call, e.g. from a plugin);
docs/contributing.md walks through it.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch.nn as nn

from archs.resnet import PLAIN_BLOCKS, build_resnet
from ops.MASNet import MAS_BLOCKS
from ops.MASNet import UNCOUNTED_MACS as MAS_UNCOUNTED_MACS
from ops.temporal_shift import TSM_BLOCKS


@dataclass(frozen=True)
class TemporalModule:
    """blocks: ``{'basic': cls, 'bottleneck': cls}``; description: what the type adds, for
    ``--type``'s help; uncounted_macs: ``{module class: fn(module, input shape) -> multiply-adds
    fvcore misses in one call of that module}``."""
    blocks: Dict[str, type]
    description: str = ''
    uncounted_macs: Dict[type, Callable] = field(default_factory=dict)


# the paper's model first (the default --type), then its baselines
TEMPORAL_MODULES: Dict[str, TemporalModule] = {
    'MASNet': TemporalModule(MAS_BLOCKS, 'MAM+MSM+TIM', MAS_UNCOUNTED_MACS),
    'TSM': TemporalModule(TSM_BLOCKS, 'shift'),
    'TSN': TemporalModule(PLAIN_BLOCKS, 'none'),
}


def register_temporal_type(name: str, blocks: Dict[str, type], description: str = '',
                           uncounted_macs: Optional[Dict[type, Callable]] = None
                           ) -> TemporalModule:
    """Add (or replace) the temporal type `name` at run time; returns its entry."""
    if set(blocks) != {'basic', 'bottleneck'}:
        raise ValueError(f"temporal type '{name}': blocks must be {{'basic': cls, "
                         f"'bottleneck': cls}}, not keys {sorted(blocks)}")
    entry = TemporalModule(dict(blocks), description, dict(uncounted_macs or {}))
    TEMPORAL_MODULES[name] = entry
    return entry


def temporal_types() -> Tuple[str, ...]:
    """The registered type names, in registration order."""
    return tuple(TEMPORAL_MODULES)


def temporal_types_help() -> str:
    """``--type``'s help: each type with what it adds, e.g. 'MASNet (MAM+MSM+TIM), TSM (shift)'."""
    return ', '.join(f'{name} ({entry.description})' if entry.description else name
                     for name, entry in TEMPORAL_MODULES.items())


def temporal_module(temporal_type: str) -> TemporalModule:
    if temporal_type not in TEMPORAL_MODULES:
        raise ValueError(f"unknown --type '{temporal_type}' "
                         f"(choose from {', '.join(temporal_types())})")
    return TEMPORAL_MODULES[temporal_type]


def build_backbone(arch: str, temporal_type: str, num_segments: int) -> nn.Module:
    """ResNet `arch` with the blocks of the registered `temporal_type` (e.g. 'MASNet')."""
    return build_resnet(arch, temporal_module(temporal_type).blocks, num_segments=num_segments)
