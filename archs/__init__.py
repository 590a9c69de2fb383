"""Backbones the temporal modules are spliced into."""
from archs.resnet import ARCHS, IMAGENET_WEIGHT_FILES, PLAIN_BLOCKS, TSM_BLOCKS, build_resnet

__all__ = ['ARCHS', 'IMAGENET_WEIGHT_FILES', 'TEMPORAL_TYPES', 'build_backbone', 'build_resnet']

TEMPORAL_TYPES = ('MASNet', 'TSM', 'TSN')


def build_backbone(arch, temporal_type, num_segments):
    """ResNet `arch` with the blocks of `temporal_type` ('MASNet', 'TSM' or 'TSN')."""
    if temporal_type == 'MASNet':
        from ops.MASNet import MAS_BLOCKS
        blocks = MAS_BLOCKS
    elif temporal_type == 'TSM':
        blocks = TSM_BLOCKS
    elif temporal_type == 'TSN':
        blocks = PLAIN_BLOCKS
    else:
        raise ValueError(f"unknown --type '{temporal_type}' (choose from {', '.join(TEMPORAL_TYPES)})")
    return build_resnet(arch, blocks, num_segments=num_segments)
