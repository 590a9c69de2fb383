"""MAS-Net: Motion Accumulation (MAM), Motion Selection (MSM) and Temporal Interaction (TIM).

The three modules sit between conv1 and conv2 of every ResNet block:

    out    = relu(bn1(conv1(x)))       # (N*T, C, H, W)
    motion = MAM(out)                  # accumulated motion, (N*T, C, H, W)
    out    = MSM(motion, out)          # per-position choice of motion vs appearance
    out    = TIM(out)                  # learnable depthwise temporal conv (shift at init)
    ...    conv2 / bn2 / (conv3 / bn3) / residual as in ResNet

Parameter names and shapes are those of the authors' release, so its checkpoints load.
The computation uses cheaper equivalent operations than the release: MAM's thin 1x1 convs
(C <-> C/64) run as batched matmuls, MSM's (1,3,3) Conv3d over a single time step runs as a
3x3 Conv2d on the same weight, the temporal mean is a mean over a view, the 2-way softmax is
a sigmoid of the difference feeding one lerp, and TIM is three channel-scaled adds of
neighbouring frames instead of a permute + Conv1d (tools/bench_model.py measures both).

A block computes its MAM -> MSM -> TIM chain one of three ways, all the same function:
- eager inference (autograd off): MSM and TIM write into buffers they own instead of
  allocating;
- eager with autograd (training, Grad-CAM): MSM's blend and TIM run as one autograd function
  (ops/mas_fused.py) that recomputes the motion in backward instead of keeping two more
  full-size activations per block;
- while a graph is recorded (tracing, ONNX, torch.export, torch.compile): plain out-of-place
  ops on 4-D tensors, which exporters record and compilers fuse into one kernel
  (tests/test_export.py checks ONNX and TorchScript against eager within 1e-4).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from archs.resnet import BasicBlock, Bottleneck, build_resnet
from ops.mas_fused import (activations, clip_mean, frames, is_channels_last, per_clip,
                           pointwise_conv, select_and_interact, temporal_conv, temporal_taps)


def recording_graph():
    """True while a graph is recorded for export (TorchScript tracing, ONNX, torch.export).

    Exporters record ``out=`` calls and in-place updates of views badly or not at all
    (``torch.onnx.export`` fails on ``lerp(..., out=)``), so they get out-of-place code.
    """
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def reuse_buffers():
    """True when MSM/TIM may overwrite buffers: eager inference (autograd off, no export)."""
    return not torch.is_grad_enabled() and not recording_graph()


def nhwc_matmuls(x):
    """Whether MAM's 1x1 convs run as NHWC matmuls for the activation ``x``: in channels-last
    models, and in recorded graphs (compilers run convolutions channels-last)."""
    return recording_graph() or is_channels_last(x)


class MAM(nn.Module):
    """Motion Accumulation Module.

    A 1x1 conv reduces C to C/reduction channels, frame t is blended with frame t+1
    (``(b[t] + alpha * b[t+1]) / (1 + alpha)``, the last frame kept as it is), and a 1x1 conv
    projects back to C. Input/output ``(N*T, C, H, W)``.
    """

    def __init__(self, channels, num_segments, reduction=64, alpha=0.5):
        super().__init__()
        self.num_segments = num_segments
        self.alpha = alpha
        reduced = max(channels // reduction, 1)
        self.conv1 = nn.Conv2d(channels, reduced, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(reduced)
        self.conv3 = nn.Conv2d(reduced, channels, kernel_size=1, bias=False)

    def accumulate(self, x):
        """The reduced, accumulated features ``(N, T, C/reduction, H, W)`` of ``(N*T, C, H, W)``."""
        nt, c, h, w = x.shape
        b = self.bn1(pointwise_conv(x, self.conv1.weight, nhwc_matmuls(x)))  # (N*T, c, H, W)
        b = b.view(nt // self.num_segments, self.num_segments, -1, h, w)  # (N, T, c, H, W)
        blended = (b[:, :-1] + self.alpha * b[:, 1:]) / (1 + self.alpha)  # (N, T-1, c, H, W)
        return torch.cat([blended, b[:, -1:]], dim=1)

    def project(self, accumulated, channels_last=False):
        """The 1x1 conv back to C channels, ``(B, C/reduction, H, W)`` -> ``(B, C, H, W)``;
        ``channels_last``: as an NHWC matmul with an NHWC result."""
        return pointwise_conv(accumulated, self.conv3.weight, channels_last)

    def forward(self, x):
        accumulated = self.accumulate(x)
        return self.project(accumulated.flatten(0, 1), nhwc_matmuls(x))  # (N*T, C, H, W)


class MSM(nn.Module):
    """Motion Selection Module (SK-style selective fusion, 'spatial' attention mode).

    The temporal means of motion and appearance are summed, passed through two grouped 3x3
    convs (C -> C/reduction -> 2C) and a softmax over the two branches gives, for every clip,
    channel and position, the weight of motion vs appearance, shared by the T frames.

    conv_fc1/conv_fc2 keep the release's Conv3d (1,3,3) weights and bn_fc1 its BatchNorm3d.
    The release skipped bn_fc1 + relu when a batch held a single clip, which made a clip's
    prediction depend on its batch; here they are always applied.
    Inputs ``motion``, ``appearance``: ``(N*T, C, H, W)``; output ``(N*T, C, H, W)``;
    ``motion_mean`` ``(N, C, H, W)``, if given, is the temporal mean of ``motion``.
    In eager inference (``reuse_buffers()``) the output is written into ``motion``'s memory,
    which saves an allocation per block; the caller must not need ``motion`` afterwards.
    MAS blocks call ``selection`` and ``blend`` (or ops/mas_fused.py in training) themselves.
    """

    def __init__(self, channels, num_segments, reduction=4, groups=4):
        super().__init__()
        self.num_segments = num_segments
        self.groups = groups
        hidden = channels // reduction
        self.conv_fc1 = nn.Conv3d(channels, hidden, kernel_size=(1, 3, 3), padding=(0, 1, 1),
                                  groups=groups, bias=False)
        self.bn_fc1 = nn.BatchNorm3d(hidden)
        self.conv_fc2 = nn.Conv3d(hidden, 2 * channels, kernel_size=(1, 3, 3), padding=(0, 1, 1),
                                  groups=groups, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def selection(self, motion_mean, appearance):
        """The softmax weight of motion, ``(N, C, H, W)``, from the temporal mean of motion
        ``(N, C, H, W)`` and the appearance ``(N*T, C, H, W)``."""
        nt, c, h, w = appearance.shape
        n = nt // self.num_segments
        cl = is_channels_last(appearance)
        # (N, C, H, W), NCHW: oneDNN's grouped convs are slower channels-last (3-4x in backward)
        s = (motion_mean + clip_mean(appearance, self.num_segments, cl)).contiguous()
        s = F.conv2d(s, self.conv_fc1.weight.squeeze(2), padding=1, groups=self.groups)
        s = self.relu(self.bn_fc1(s.unsqueeze(2)).squeeze(2))  # (N, C/r, H, W)
        s = F.conv2d(s, self.conv_fc2.weight.squeeze(2), padding=1, groups=self.groups)
        s = s.view(n, 2, c, h, w)  # (N, 2, C, H, W): logits of motion / appearance
        w_motion = torch.sigmoid(s[:, 0] - s[:, 1])  # 2-way softmax, (N, C, H, W)
        return w_motion.contiguous(memory_format=torch.channels_last) if cl else w_motion

    def blend(self, motion, appearance, w_motion):
        """``w * motion + (1 - w) * appearance``, ``(N*T, C, H, W)``; w ``(N, C, H, W)`` is shared
        by the T frames. Motion and appearance share a memory format.

        In eager inference it overwrites ``motion`` in place."""
        nt, c, h, w = appearance.shape
        n = nt // self.num_segments
        if recording_graph():  # 4-D, so the compiler keeps the activations' memory format
            w_motion = w_motion.unsqueeze(1).expand(n, self.num_segments, c, h, w)
            return torch.lerp(appearance, motion, w_motion.reshape(nt, c, h, w))
        cl = is_channels_last(appearance)
        m, a = frames(motion, self.num_segments, cl), frames(appearance, self.num_segments, cl)
        w_motion = per_clip(w_motion, cl)
        out = torch.lerp(a, m, w_motion, out=m) if reuse_buffers() else torch.lerp(a, m, w_motion)
        return activations(out, cl)

    def forward(self, motion, appearance, motion_mean=None):
        if motion_mean is None:
            motion_mean = clip_mean(motion, self.num_segments, is_channels_last(motion))
        return self.blend(motion, appearance, self.selection(motion_mean, appearance))


class TIM(nn.Module):
    """Temporal Interaction Module: depthwise temporal conv, kernel 3, zero padding, no bias.

    The weight ``(C, 1, 3)`` starts as TSM's shift: the first C/8 channels take frame t+1,
    the next C/8 take frame t-1, the rest keep frame t. Input/output ``(N*T, C, H, W)``;
    ``out``, if given, is a tensor of the same shape (not aliasing ``x``) to write the result to.
    """

    def __init__(self, channels, num_segments, fold_div=8):
        super().__init__()
        self.num_segments = num_segments
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=1, groups=channels,
                              bias=False)
        fold = channels // fold_div
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:fold, 0, 2] = 1
            self.conv.weight[fold:2 * fold, 0, 0] = 1
            self.conv.weight[2 * fold:, 0, 1] = 1

    def forward(self, x, out=None):
        nt, c, h, w = x.shape
        if recording_graph():  # out of place, and 4-D like the activations (see MSM.blend)
            x5 = x.view(nt // self.num_segments, self.num_segments, c, h, w)  # (N, T, C, H, W)
            k_prev, k_same, k_next = temporal_taps(self.conv.weight)
            pad = (0, 0, 0, 0, 0, 0)  # W, H, C: no padding
            previous = F.pad(x5[:, :-1], pad + (1, 0)).view(nt, c, h, w)  # frame t-1 at t
            following = F.pad(x5[:, 1:], pad + (0, 1)).view(nt, c, h, w)  # frame t+1 at t
            return x * k_same + previous * k_prev + following * k_next
        cl = is_channels_last(x)
        if out is not None:
            out = frames(out, self.num_segments, cl)
        out = temporal_conv(frames(x, self.num_segments, cl), self.conv.weight, out, cl)
        return activations(out, cl)


class _MASMixin:
    """The MAM -> MSM -> TIM chain shared by the basic and bottleneck MAS blocks."""

    def _build_mas(self, planes, num_segments):
        self.num_segments = num_segments
        self.MAM = MAM(planes, num_segments)
        self.MSM = MSM(planes, num_segments)
        self.TIM = TIM(planes, num_segments)

    def temporal(self, x):
        nhwc = nhwc_matmuls(x)  # the projections' results in the activations' memory format
        accumulated = self.MAM.accumulate(x)  # (N, T, C/64, H, W)
        reduced = accumulated.flatten(0, 1)  # (N*T, C/64, H, W)
        # 1x1 conv and temporal mean commute: average the C/64 channels, not the C
        motion_mean = self.MAM.project(accumulated.mean(dim=1), nhwc)  # (N, C, H, W)
        w_motion = self.MSM.selection(motion_mean, x)  # (N, C, H, W)
        if torch.is_grad_enabled() and not recording_graph():
            # training: one autograd function that recomputes motion in backward (ops/mas_fused)
            return select_and_interact(x, reduced, self.MAM.conv3.weight, w_motion,
                                       self.TIM.conv.weight, nhwc)
        selected = self.MSM.blend(self.MAM.project(reduced, nhwc), x, w_motion)  # (N*T, C, H, W)
        # eager inference: x (this block's conv1 output) is not needed any more, reuse its memory
        return self.TIM(selected, out=x if reuse_buffers() else None)


class MASBottleneck(_MASMixin, Bottleneck):
    """ResNet bottleneck with MAM, MSM and TIM after conv1. Input/output ``(N*T, C, H, W)``."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, bias=True, num_segments=8):
        super().__init__(inplanes, planes, stride, downsample, bias)
        self._build_mas(planes, num_segments)


class MASBasicBlock(_MASMixin, BasicBlock):
    """ResNet basic block with MAM, MSM and TIM after conv1 (lighter MAS-ResNet-10/18/34)."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, bias=True, num_segments=8):
        super().__init__(inplanes, planes, stride, downsample, bias)
        self._build_mas(planes, num_segments)


MAS_BLOCKS = {'basic': MASBasicBlock, 'bottleneck': MASBottleneck}


def tim_macs(module, input_shape):
    """Multiply-adds of TIM counted as the depthwise temporal conv it is (3 per output)."""
    nt, c, h, w = input_shape
    return 3 * nt * c * h * w


# what FLOP counters miss: TIM runs as elementwise adds, which fvcore does not count
UNCOUNTED_MACS = {TIM: tim_macs}


def mas_resnet(arch, num_segments=8):
    """MAS-ResNet of any arch in archs.resnet.ARCHS (fc still 1000-way, replaced by the head)."""
    return build_resnet(arch, MAS_BLOCKS, num_segments=num_segments)


def mas_resnet50(num_segments=8):
    return mas_resnet('resnet50', num_segments)


def mas_resnet101(num_segments=8):
    return mas_resnet('resnet101', num_segments)
