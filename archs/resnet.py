"""ResNet backbones that temporal modules are spliced into.

One definition serves every temporal module type (ops/temporal.py lists them): a block has
two hooks, ``shift_input`` (applied to the residual branch's input) and ``temporal``
(applied after conv1/bn1/relu); the plain blocks leave both as identity and the temporal
blocks (ops/temporal_shift.py, ops/MASNet.py) override them. This module knows nothing of
them. Every frame of every clip goes through the 2D layers as
one batch: inputs are ``(N*T, C, H, W)`` with the T frames of a clip contiguous.

As in the MAS-Net release every Conv2d carries a bias. Biases start at zero so that
torchvision's bias-free ImageNet weights give exactly the ImageNet network.
"""
import math
from functools import partial

import torch.nn as nn


def conv3x3(in_planes, out_planes, stride=1, bias=True):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(in_planes, out_planes, stride=1, bias=True):
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=bias)


class _TemporalHooks(nn.Module):
    """The two hooks of a block; identity here, overridden by the TSM and MAS blocks."""

    def shift_input(self, x):
        """Applied to the residual branch's input ``(N*T, C, H, W)``."""
        return x

    def temporal(self, x):
        """Applied after conv1/bn1/relu, ``(N*T, C, H, W)``."""
        return x


class BasicBlock(_TemporalHooks):
    """Two 3x3 convs (ResNet-18/34). Input/output ``(N*T, C, H, W)``."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, bias=True):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self.shift_input(x))))
        out = self.temporal(out)
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(_TemporalHooks):
    """1x1 -> 3x3 (stride) -> 1x1 bottleneck (ResNet-50/101). Input/output ``(N*T, C, H, W)``."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, bias=True):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion, bias=bias)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(self.shift_input(x))))
        out = self.temporal(out)
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout (conv1, bn1, relu, maxpool, layer1..4, avgpool, fc).

    block: a block class, or a ``functools.partial`` of one binding temporal arguments.
    bias: give every Conv2d a bias (the MAS-Net release does; torchvision does not).
    """

    def __init__(self, block, layers, num_classes=1000, bias=True):
        super().__init__()
        self.inplanes = 64
        self.bias = bias
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=bias)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        expansion = getattr(block, 'expansion', None) or block.func.expansion
        self.fc = nn.Linear(512 * expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, block, planes, blocks, stride=1):
        expansion = getattr(block, 'expansion', None) or block.func.expansion
        downsample = None
        if stride != 1 or self.inplanes != planes * expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * expansion, stride, bias=self.bias),
                nn.BatchNorm2d(planes * expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, bias=self.bias)]
        self.inplanes = planes * expansion
        layers += [block(self.inplanes, planes, bias=self.bias) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N*T, 64, H/4, W/4)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (N*T, 512*e, H/32, W/32)
        x = self.avgpool(x).flatten(1)  # (N*T, 512*e)
        return self.fc(x)


# arch name -> (block kind, layers per stage)
ARCH_LAYERS = {
    'resnet10': ('basic', [1, 1, 1, 1]),
    'resnet18': ('basic', [2, 2, 2, 2]),
    'resnet34': ('basic', [3, 4, 6, 3]),
    'resnet50': ('bottleneck', [3, 4, 6, 3]),
    'resnet101': ('bottleneck', [3, 4, 23, 3]),
}
ARCHS = tuple(ARCH_LAYERS)

# torchvision IMAGENET1K_V1 weight files (the release's ImageNet initialisation)
IMAGENET_WEIGHT_FILES = {
    'resnet18': 'resnet18-f37072fd.pth',
    'resnet34': 'resnet34-b627a593.pth',
    'resnet50': 'resnet50-0676ba61.pth',
    'resnet101': 'resnet101-63fe2227.pth',
}


def build_resnet(arch, block_types, num_segments=8, bias=True):
    """A ResNet of `arch` with blocks from ``block_types = {'basic': cls, 'bottleneck': cls}``.

    Temporal block classes take a ``num_segments`` keyword; plain ones are used as they are.
    """
    if arch not in ARCH_LAYERS:
        raise ValueError(f"unknown arch '{arch}' (choose from {', '.join(ARCHS)})")
    kind, layers = ARCH_LAYERS[arch]
    block = block_types[kind]
    if block not in (BasicBlock, Bottleneck):
        block = partial(block, num_segments=num_segments)
    return ResNet(block, layers, bias=bias)


PLAIN_BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}
