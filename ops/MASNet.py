"""MAS-Net: Motion Accumulation (MAM), Motion Selection (MSM) and Temporal Interaction (TIM).

The three modules sit between conv1 and conv2 of every ResNet block (``_MASMixin.temporal``):

    out    = relu(bn1(conv1(x)))       # (N*T, C, H, W), T frames per clip
    motion = MAM(out)                  # b = bn(conv_C->C/64(out)); b[t] = (b[t] + a*b[t+1])/(1+a)
                                       # for t < T-1 (a = 0.5); motion = conv_C/64->C(b)
    out    = MSM(motion, out)          # s = mean_t(motion) + mean_t(out); two grouped 3x3 convs
                                       # give logits (N, 2, C, H, W); w = softmax over the 2;
                                       # out = w_motion * motion + w_out * out (w shared by T)
    out    = TIM(out)                  # depthwise conv over t, kernel 3, zero padding (a shift
                                       # at init)
    ...    conv2 / bn2 / (conv3 / bn3) / residual as in ResNet

``MAM.forward``, ``MSM.forward`` and ``TIM.forward`` compute exactly these lines with plain
PyTorch ops (the release's operations; ops/reference.py writes them once more, independently,
as the tests' oracle). A block runs them when its ``form`` is ``'reference'``. The other forms
compute the same function faster (tests/test_model.py and tests/test_mas_block.py check every
form against ops/reference.py in float64):

- ``'eager'`` (the default): cheaper equivalent operations. MAM's thin 1x1 convs run as
  matmuls, the temporal mean is taken on C/64 channels before the projection (they commute),
  MSM's Conv3d over one time step is a Conv2d, its 2-way softmax a sigmoid feeding one lerp, TIM
  three channel-scaled adds (ops/mas_fused.py). In inference (autograd off) the blend and TIM
  write into buffers the block no longer needs; with autograd the blend and TIM are one autograd
  function (``SelectInteract``) that recomputes the motion in backward instead of keeping two
  more full-size activations per block.
- ``'compiled'``: as ``'eager'``, but the element-wise chain (projection, blend, TIM, and their
  backward) runs as the one function ops/mas_fused.py compiles with torch.compile (regional
  compilation: the rest of the model stays eager). It pays a compilation at first use.
- while a graph is recorded (tracing, ONNX, torch.export, a torch.compile of the whole model),
  ``'eager'`` and ``'compiled'`` blocks run plain out-of-place ops on 4-D tensors, which
  exporters record and compilers fuse (``_MASMixin.temporal_recorded``).

The switch, like timm's ``fused_attn``: every block's ``form`` attribute, defaulting to the
environment variable ``MASNET_FORM`` (``reference`` | ``eager`` | ``compiled``; unset: eager) at
construction; ``set_form(form, model)`` changes it in a built model, ``set_form(form)`` the
default.

Parameter names and shapes are those of the authors' release, so its checkpoints load.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from archs.resnet import BasicBlock, Bottleneck
from ops.errors import UserError
from ops.mas_fused import (
    activations,
    clip_mean,
    compiled_select_and_interact,
    frames,
    is_channels_last,
    per_clip,
    pointwise_conv,
    select_and_interact,
    temporal_conv,
    temporal_taps,
)

FORMS = ('reference', 'eager', 'compiled')
FORM_ENV = 'MASNET_FORM'


def checked_form(form, source):
    """`form` if it names a form, else a UserError naming `source` (a flag or variable)."""
    if form not in FORMS:
        raise UserError(f"{source}: unknown MAS block form '{form}' (choose from "
                        f"{', '.join(FORMS)})")
    return form


def default_form():
    """The form new MAS blocks take: the last ``set_form``, else ``$MASNET_FORM``, else eager."""
    if _default.form is None:
        return checked_form(os.environ.get(FORM_ENV) or 'eager', FORM_ENV)
    return _default.form


class _default:
    form = None  # set by set_form


def set_form(form, model=None):
    """Set the form of every MAS block in `model` and return `model`; without a model, the
    default of blocks built from now on (``'reference'`` runs the readable math: a debugging
    switch). ``form=None`` (no ``--mas_form`` given) leaves the blocks as they were built."""
    if form is None:
        return model
    checked_form(form, 'set_form')
    if model is None:
        _default.form = form
        return None
    for module in model.modules():
        if isinstance(module, _MASMixin):
            module.form = form
    return model


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


class MAM(nn.Module):
    """Motion Accumulation Module.

    A 1x1 conv reduces C to C/reduction channels, frame t is blended with frame t+1
    (``(b[t] + alpha * b[t+1]) / (1 + alpha)``, the last frame kept as it is), and a 1x1 conv
    projects back to C.

    Args:
        channels: C, the channels of the block's conv1 output.
        num_segments: T, frames per clip.
        reduction: C / channels of the accumulated features (at least 1 channel).
        alpha: weight of frame t+1 in the blend.
    Shapes: ``forward``: ``(N*T, C, H, W)`` -> ``(N*T, C, H, W)``.
    """

    def __init__(self, channels, num_segments, reduction=64, alpha=0.5):
        super().__init__()
        self.num_segments = num_segments
        self.alpha = alpha
        reduced = max(channels // reduction, 1)
        self.conv1 = nn.Conv2d(channels, reduced, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(reduced)
        self.conv3 = nn.Conv2d(reduced, channels, kernel_size=1, bias=False)

    def forward(self, x):
        """The readable formulation (the ``'reference'`` form)."""
        b = self.bn1(self.conv1(x))  # (N*T, C/64, H, W)
        nt, r, h, w = b.shape
        b = b.view(nt // self.num_segments, self.num_segments, r, h, w)  # (N, T, C/64, H, W)
        blended = (b[:, :-1] + self.alpha * b[:, 1:]) / (1 + self.alpha)
        accumulated = torch.cat([blended, b[:, -1:]], dim=1)
        return self.conv3(accumulated.view(nt, r, h, w))  # (N*T, C, H, W)

    def accumulate(self, x, channels_last=False):
        """Fast forms: the reduced, accumulated features ``(N, T, C/64, H, W)`` of
        ``(N*T, C, H, W)``, the 1x1 conv as a matmul (NHWC for ``channels_last``)."""
        nt, c, h, w = x.shape
        b = self.bn1(pointwise_conv(x, self.conv1.weight, channels_last))  # (N*T, c, H, W)
        b = b.view(nt // self.num_segments, self.num_segments, -1, h, w)  # (N, T, c, H, W)
        blended = (b[:, :-1] + self.alpha * b[:, 1:]) / (1 + self.alpha)  # (N, T-1, c, H, W)
        return torch.cat([blended, b[:, -1:]], dim=1)

    def project(self, accumulated, channels_last=False):
        """Fast forms: the 1x1 conv back to C channels as a matmul, ``(B, C/64, H, W)`` ->
        ``(B, C, H, W)`` (``channels_last``: an NHWC matmul with an NHWC result)."""
        return pointwise_conv(accumulated, self.conv3.weight, channels_last)


class MSM(nn.Module):
    """Motion Selection Module (SK-style selective fusion, 'spatial' attention mode).

    The temporal means of motion and appearance are summed, passed through two grouped 3x3
    convs (C -> C/reduction -> 2C) and a softmax over the two branches gives, for every clip,
    channel and position, the weight of motion vs appearance, shared by the T frames.

    conv_fc1/conv_fc2 keep the release's Conv3d (1,3,3) weights and bn_fc1 its BatchNorm3d.
    The release skipped bn_fc1 + relu when a batch held a single clip, which made a clip's
    prediction depend on its batch; here they are always applied.

    Args:
        channels: C; num_segments: T; reduction: C / hidden channels; groups: of both convs.
    Shapes: ``forward(motion, appearance)``: two ``(N*T, C, H, W)`` -> ``(N*T, C, H, W)``.
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

    def forward(self, motion, appearance):
        """The readable formulation (the ``'reference'`` form)."""
        nt, c, h, w = appearance.shape
        n = nt // self.num_segments
        m = motion.view(n, self.num_segments, c, h, w)  # (N, T, C, H, W)
        a = appearance.view(n, self.num_segments, c, h, w)
        s = (m.mean(dim=1) + a.mean(dim=1)).unsqueeze(2)  # (N, C, 1, H, W): one time step
        s = self.relu(self.bn_fc1(self.conv_fc1(s)))  # (N, C/4, 1, H, W)
        weights = F.softmax(self.conv_fc2(s).view(n, 2, 1, c, h, w), dim=1)  # (N, 2, 1, C, H, W)
        return (weights[:, 0] * m + weights[:, 1] * a).view(nt, c, h, w)

    def selection(self, motion_mean, appearance):
        """Fast forms: the softmax weight of motion, ``(N, C, H, W)``, from the temporal mean of
        motion ``(N, C, H, W)`` and the appearance ``(N*T, C, H, W)``."""
        nt, c, h, w = appearance.shape
        n = nt // self.num_segments
        cl = is_channels_last(appearance)
        # (N, C, H, W), NCHW: oneDNN's grouped convs are no faster channels-last, and dense
        # block-diagonal or im2col + bmm forms are slower (docs/fused_block.md)
        s = (motion_mean + clip_mean(appearance, self.num_segments, cl)).contiguous()
        s = F.conv2d(s, self.conv_fc1.weight.squeeze(2), padding=1, groups=self.groups)
        s = self.relu(self.bn_fc1(s.unsqueeze(2)).squeeze(2))  # (N, C/r, H, W)
        s = F.conv2d(s, self.conv_fc2.weight.squeeze(2), padding=1, groups=self.groups)
        s = s.view(n, 2, c, h, w)  # (N, 2, C, H, W): logits of motion / appearance
        w_motion = torch.sigmoid(s[:, 0] - s[:, 1])  # 2-way softmax, (N, C, H, W)
        return w_motion.contiguous(memory_format=torch.channels_last) if cl else w_motion

    def blend(self, motion, appearance, w_motion):
        """Fast forms: ``w * motion + (1 - w) * appearance``, ``(N*T, C, H, W)``; w
        ``(N, C, H, W)`` is shared by the T frames. Motion and appearance share a memory format.
        In eager inference (``reuse_buffers()``) it overwrites ``motion`` in place."""
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


class TIM(nn.Module):
    """Temporal Interaction Module: depthwise temporal conv, kernel 3, zero padding, no bias.

    The weight ``(C, 1, 3)`` starts as TSM's shift: the first C/8 channels take frame t+1,
    the next C/8 take frame t-1, the rest keep frame t.

    Args:
        channels: C; num_segments: T; fold_div: C / channels shifted each way at init.
    Shapes: ``forward(x)``: ``(N*T, C, H, W)`` -> ``(N*T, C, H, W)``.
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

    def forward(self, x, out=None, fused=True):
        """``fused``: three channel-scaled adds of neighbouring frames (the fast forms), into
        ``out`` if given (same shape, not aliasing ``x``); False: the readable formulation, the
        Conv1d over time on an ``(N*H*W, C, T)`` copy (the ``'reference'`` form)."""
        nt, c, h, w = x.shape
        n = nt // self.num_segments
        if not fused:
            y = x.view(n, self.num_segments, c, h, w).permute(0, 3, 4, 2, 1)  # (N, H, W, C, T)
            y = self.conv(y.reshape(n * h * w, c, self.num_segments))  # (N*H*W, C, T)
            return y.view(n, h, w, c, self.num_segments).permute(0, 4, 3, 1, 2).reshape(nt, c, h, w)
        if recording_graph():  # out of place, and 4-D like the activations (see MSM.blend)
            x5 = x.view(n, self.num_segments, c, h, w)  # (N, T, C, H, W)
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
    """The MAM -> MSM -> TIM chain shared by the basic and bottleneck MAS blocks.

    ``form`` (``FORMS``) chooses how ``temporal`` computes it; see the module docstring."""

    def _build_mas(self, planes, num_segments):
        self.num_segments = num_segments
        self.form = default_form()
        self.MAM = MAM(planes, num_segments)
        self.MSM = MSM(planes, num_segments)
        self.TIM = TIM(planes, num_segments)

    def temporal(self, x):
        """MAM -> MSM -> TIM of conv1's output ``(N*T, C, H, W)``."""
        if self.form == 'reference':
            return self.TIM(self.MSM(self.MAM(x), x), fused=False)
        if recording_graph():
            return self.temporal_recorded(x)
        nhwc = is_channels_last(x)  # the projections' results in the activations' memory format
        reduced, w_motion = self.motion_and_selection(x, nhwc)
        projection, taps = self.MAM.conv3.weight, self.TIM.conv.weight
        if self.form == 'compiled':
            return compiled_select_and_interact(x, reduced, projection, w_motion, taps, nhwc)
        if torch.is_grad_enabled():  # one autograd function, motion recomputed in backward
            return select_and_interact(x, reduced, projection, w_motion, taps, nhwc)
        selected = self.MSM.blend(self.MAM.project(reduced, nhwc), x, w_motion)  # into motion
        return self.TIM(selected, out=x)  # x (conv1's output) is not needed any more: reuse it

    def motion_and_selection(self, x, channels_last):
        """Fast forms, up to the full-size work: MAM's accumulated C/64 channels
        ``(N*T, C/64, H, W)`` and MSM's weight of motion ``(N, C, H, W)``."""
        accumulated = self.MAM.accumulate(x, channels_last)  # (N, T, C/64, H, W)
        # 1x1 conv and temporal mean commute: average the C/64 channels, not the C
        motion_mean = self.MAM.project(accumulated.mean(dim=1), channels_last)  # (N, C, H, W)
        return accumulated.flatten(0, 1), self.MSM.selection(motion_mean, x)

    def temporal_recorded(self, x):
        """The out-of-place form exporters record and compilers fuse (MAM's 1x1 convs as NHWC
        matmuls: compilers run convolutions channels-last)."""
        reduced, w_motion = self.motion_and_selection(x, True)
        return self.TIM(self.MSM.blend(self.MAM.project(reduced, True), x, w_motion))


class MASBottleneck(_MASMixin, Bottleneck):
    """ResNet bottleneck with MAM, MSM and TIM after conv1.

    Args: as ``archs.resnet.Bottleneck``, plus num_segments (T). Shapes: ``(N*T, C, H, W)``
    -> ``(N*T, 4 * planes, H / stride, W / stride)``."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, bias=True, num_segments=8):
        super().__init__(inplanes, planes, stride, downsample, bias)
        self._build_mas(planes, num_segments)


class MASBasicBlock(_MASMixin, BasicBlock):
    """ResNet basic block with MAM, MSM and TIM after conv1 (lighter MAS-ResNet-10/18/34).

    Args: as ``archs.resnet.BasicBlock``, plus num_segments (T). Shapes: ``(N*T, C, H, W)``
    -> ``(N*T, planes, H / stride, W / stride)``."""

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
