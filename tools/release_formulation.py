"""The release's formulation of the MAS modules, written independently of ops/MASNet.py.

MSM's (1,3,3) Conv3d over one time step, avg_pool3d for the temporal mean, a 2-way softmax,
MAM's per-frame loop, and TIM as permute + Conv1d: the tests' oracle for every form of
ops/MASNet.py, and tools/bench_model.py's release-style network. The functions take the
modules (for their parameters and hyper-parameters, e.g. MAM's ``alpha``) and an input
``(N*T, C, H, W)``.
"""
import torch.nn as nn
import torch.nn.functional as F

from ops.MASNet import MASBottleneck


def mam(mod, x, T):
    """MAM with a loop over frames (frame t blended with t+1 by ``mod.alpha``)."""
    b = mod.bn1(mod.conv1(x))
    nt, c, h, w = b.shape
    b = b.view(nt // T, T, c, h, w)
    a = b.clone()
    for t in range(T - 1):
        a[:, t] = (b[:, t] + mod.alpha * b[:, t + 1]) / (1 + mod.alpha)
    return mod.conv3(a.view(nt, c, h, w))


def msm(mod, motion, appearance, T):
    """MSM with avg_pool3d, Conv3d and a 2-way softmax on (N, C, T, H, W) tensors."""
    nt, c, h, w = appearance.shape
    n = nt // T
    m5 = motion.view(n, T, c, h, w).permute(0, 2, 1, 3, 4)  # (N, C, T, H, W)
    a5 = appearance.view(n, T, c, h, w).permute(0, 2, 1, 3, 4)
    s = F.avg_pool3d(m5, (T, 1, 1)) + F.avg_pool3d(a5, (T, 1, 1))  # (N, C, 1, H, W)
    s = F.relu(mod.bn_fc1(mod.conv_fc1(s)))  # Conv3d (1,3,3) over a single time step
    s = mod.conv_fc2(s).view(n, 2, c, 1, h, w)
    weights = F.softmax(s, dim=1)
    out = m5 * weights[:, 0] + a5 * weights[:, 1]  # (N, C, T, H, W)
    return out.permute(0, 2, 1, 3, 4).reshape(nt, c, h, w)


def tim(mod, x, T):
    """TIM as a Conv1d over time on a permuted (N*H*W, C, T) copy."""
    nt, c, h, w = x.shape
    y = x.view(nt // T, T, c, h, w).permute(0, 3, 4, 2, 1).reshape(-1, c, T)  # (N*H*W, C, T)
    y = F.conv1d(y, mod.conv.weight, padding=1, groups=c)
    return y.view(nt // T, h, w, c, T).permute(0, 4, 3, 1, 2).reshape(nt, c, h, w)


def bottleneck(block, x, T):
    """A MASBottleneck's forward with the release's modules."""
    identity = x if block.downsample is None else block.downsample(x)
    out = F.relu(block.bn1(block.conv1(x)))
    out = tim(block.TIM, msm(block.MSM, mam(block.MAM, out, T), out, T), T)
    out = F.relu(block.bn2(block.conv2(out)))
    out = block.bn3(block.conv3(out))
    return F.relu(out + identity)


def basic_block(block, x, T):
    """A MASBasicBlock's forward with the release's modules."""
    identity = x if block.downsample is None else block.downsample(x)
    out = F.relu(block.bn1(block.conv1(x)))
    out = tim(block.TIM, msm(block.MSM, mam(block.MAM, out, T), out, T), T)
    out = block.bn2(block.conv2(out))
    return F.relu(out + identity)


def temporal_model(model, x):
    """A MASNet TemporalModel's forward with the release's modules."""
    T = model.num_segments
    net = model.base_model
    y = x.view(-1, 3, *x.shape[-2:])
    y = net.maxpool(F.relu(net.bn1(net.conv1(y))))
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            y = (bottleneck if isinstance(block, MASBottleneck) else basic_block)(block, y, T)
    y = net.fc(net.avgpool(y).flatten(1))  # fc is the Dropout before new_fc
    return model.new_fc(y).view(x.size(0), T, -1).mean(1)


class ReleaseStyleModel(nn.Module):
    """A MASNet TemporalModel computed the release's way (same parameters, same outputs)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return temporal_model(self.model, x)
