"""Backbones the temporal modules are spliced into (they know nothing of those modules)."""
from archs.resnet import ARCHS, IMAGENET_WEIGHT_FILES, PLAIN_BLOCKS, build_resnet

__all__ = ['ARCHS', 'IMAGENET_WEIGHT_FILES', 'PLAIN_BLOCKS', 'build_resnet']
