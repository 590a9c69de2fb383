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

``MAM.forward``, ``MSM.forward`` and ``TIM.forward`` are these lines, in plain PyTorch ops:
the truth the other forms follow. A block runs them when its ``form`` is ``'readable'``. The
other forms compute the same function faster:

- ``'fast'`` (the default): cheaper equivalent operations. MAM's thin 1x1 convs run as
  matmuls, the temporal mean is taken on C/64 channels before the projection (they commute),
  MSM's Conv3d over one time step is a Conv2d, its 2-way softmax a sigmoid feeding one lerp, TIM
  three channel-scaled adds (``TIM.interact``, ops/mas_fused.py). In inference (autograd off)
  the blend and TIM write into buffers the block no longer needs; with autograd the blend and
  TIM are one autograd function (``SelectInteract``) that recomputes the motion in backward
  instead of keeping two more full-size activations per block.
- ``'compiled'``: as ``'fast'``, but the element-wise chain (projection, blend, TIM, and their
  backward) runs as the one function ops/mas_fused.py compiles with torch.compile (regional
  compilation: the rest of the model stays eager). It pays a compilation at first use.
- while a graph is recorded (tracing, ONNX, torch.export, a torch.compile of the whole model),
  ``'fast'`` and ``'compiled'`` blocks run plain out-of-place ops on 4-D tensors, which
  exporters record and compilers fuse (``recorded_temporal``).

MAM's blend is written once (``MAM.accumulate_frames``) and every form calls it. The rest of
the fast forms is checked against the readable modules (``check_forms``): at a block's first
fast forward (or when a builder calls ``check_forms(model)``), once per block shape and
hyper-parameters per process, on tiny float64 copies; a module whose readable forward was
edited without its fast form stops the run with one line (``FormMismatch``) naming the module,
the difference and the way out. The old form names 'reference' and 'eager' are still accepted.

The switch, like timm's ``fused_attn``: every block's ``form`` attribute, defaulting to the
environment variable ``MASNET_FORM`` (``readable`` | ``fast`` | ``compiled``; unset: fast) at
construction; ``set_form(form, model)`` changes it in a built model, ``set_form(form)`` the
default. ``hyperparameters`` on each module class names the attributes that change its function.

Parameter names and shapes are those of the authors' release, so its checkpoints load.
"""
import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from archs.resnet import BasicBlock, Bottleneck
from ops.errors import UserError
from ops.mas_fused import (
    FusedSelectInteract,
    activations,
    clip_mean,
    compiled_select_and_interact,
    frames,
    is_channels_last,
    per_clip,
    pointwise_conv,
    run_uncompiled,
    select_and_interact,
    temporal_conv,
    temporal_taps,
)

FORMS = ('readable', 'fast', 'compiled')
FORM_ALIASES = {'reference': 'readable', 'eager': 'fast'}  # the names before
FORM_ENV = 'MASNET_FORM'


def form_name(name):
    """The form `name` spells (an old name maps to its new one); other names pass unchanged."""
    return FORM_ALIASES.get(name, name)


def checked_form(form, source):
    """The form `form` names, else a UserError naming `source` (a flag or variable)."""
    form = form_name(form)
    if form not in FORMS:
        raise UserError(f"{source}: unknown MAS block form '{form}' (choose from "
                        f"{', '.join(FORMS)}; old names: {', '.join(FORM_ALIASES)})")
    return form


def default_form():
    """The form new MAS blocks take: the last ``set_form``, else ``$MASNET_FORM``, else fast."""
    if _default.form is None:
        return checked_form(os.environ.get(FORM_ENV) or 'fast', FORM_ENV)
    return _default.form


class _default:
    form = None  # set by set_form


def set_form(form, model=None):
    """Set the form of every MAS block in `model`, check its fast blocks against their readable
    modules (``check_forms``: before a compile of the whole model records a graph, where the
    lazy check at a block's first fast forward cannot run) and return `model`; without a model,
    the default of blocks built from now on (``'readable'`` runs the modules' forwards: the
    switch for an edited module). ``form=None`` (no ``--mas_form``) keeps the blocks' forms."""
    if form is not None:
        form = checked_form(form, 'set_form')
        if model is None:
            _default.form = form
            return None
        for module in model.modules():
            if isinstance(module, _MASMixin):
                module.form = form
    return None if model is None else check_forms(model)


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


def hyperparameter_values(module):
    """``{name: value}`` of the attributes ``module.hyperparameters`` lists."""
    return {name: getattr(module, name) for name in getattr(module, 'hyperparameters', ())}


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
    hyperparameters = ('alpha', 'reduction')

    def __init__(self, channels, num_segments, reduction=64, alpha=0.5):
        super().__init__()
        self.num_segments = num_segments
        self.alpha = alpha
        self.reduction = reduction
        reduced = max(channels // reduction, 1)
        self.conv1 = nn.Conv2d(channels, reduced, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(reduced)
        self.conv3 = nn.Conv2d(reduced, channels, kernel_size=1, bias=False)

    def forward(self, x):
        """The readable formulation (the ``'readable'`` form)."""
        b = self.bn1(self.conv1(x))  # (N*T, C/64, H, W)
        nt, r, h, w = b.shape
        b = b.view(nt // self.num_segments, self.num_segments, r, h, w)  # (N, T, C/64, H, W)
        accumulated = self.accumulate_frames(b)
        return self.conv3(accumulated.reshape(nt, r, h, w))  # (N*T, C, H, W)

    def accumulate_frames(self, b):
        """The blend of every form: frame t of ``(N, T, c, H, W)`` with frame t+1, the last
        frame kept as it is."""
        blended = (b[:, :-1] + self.alpha * b[:, 1:]) / (1 + self.alpha)  # (N, T-1, c, H, W)
        return torch.cat([blended, b[:, -1:]], dim=1)

    def accumulate(self, x, channels_last=False):
        """Fast forms: the reduced, accumulated features ``(N, T, C/64, H, W)`` of
        ``(N*T, C, H, W)``, the 1x1 conv as a matmul (NHWC for ``channels_last``)."""
        nt, c, h, w = x.shape
        b = self.bn1(pointwise_conv(x, self.conv1.weight, channels_last))  # (N*T, c, H, W)
        return self.accumulate_frames(b.view(nt // self.num_segments, self.num_segments, -1, h, w))

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
    hyperparameters = ('reduction', 'groups')

    def __init__(self, channels, num_segments, reduction=4, groups=4):
        super().__init__()
        self.num_segments = num_segments
        self.reduction = reduction
        self.groups = groups
        hidden = channels // reduction
        self.conv_fc1 = nn.Conv3d(channels, hidden, kernel_size=(1, 3, 3), padding=(0, 1, 1),
                                  groups=groups, bias=False)
        self.bn_fc1 = nn.BatchNorm3d(hidden)
        self.conv_fc2 = nn.Conv3d(hidden, 2 * channels, kernel_size=(1, 3, 3), padding=(0, 1, 1),
                                  groups=groups, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, motion, appearance):
        """The readable formulation (the ``'readable'`` form)."""
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

    def blend(self, motion, appearance, w_motion, recording=False):
        """Fast forms: ``w * motion + (1 - w) * appearance``, ``(N*T, C, H, W)``; w
        ``(N, C, H, W)`` is shared by the T frames. Motion and appearance share a memory format.
        In eager inference (``reuse_buffers()``, not ``recording``) it overwrites ``motion``."""
        nt, c, h, w = appearance.shape
        n = nt // self.num_segments
        if recording:  # 4-D, so the compiler keeps the activations' memory format
            w_motion = w_motion.unsqueeze(1).expand(n, self.num_segments, c, h, w)
            return torch.lerp(appearance, motion, w_motion.reshape(nt, c, h, w))
        cl = is_channels_last(appearance)
        m, a = frames(motion, self.num_segments, cl), frames(appearance, self.num_segments, cl)
        w_motion = per_clip(w_motion, cl)
        out = torch.lerp(a, m, w_motion, out=m) if reuse_buffers() else torch.lerp(a, m, w_motion)
        return activations(out, cl)


class TIM(nn.Module):
    """Temporal Interaction Module: depthwise temporal conv, kernel 3, zero padding, no bias.

    The weight ``(C, 1, 3)`` starts as TSM's shift: the first C/fold_div channels take frame
    t+1, the next C/fold_div take frame t-1, the rest keep frame t.

    Args:
        channels: C; num_segments: T; fold_div: C / channels shifted each way at init.
    Shapes: ``forward(x)``: ``(N*T, C, H, W)`` -> ``(N*T, C, H, W)``.
    """
    hyperparameters = ('fold_div',)

    def __init__(self, channels, num_segments, fold_div=8):
        super().__init__()
        self.num_segments = num_segments
        self.fold_div = fold_div
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=1, groups=channels,
                              bias=False)
        fold = channels // fold_div
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:fold, 0, 2] = 1
            self.conv.weight[fold:2 * fold, 0, 0] = 1
            self.conv.weight[2 * fold:, 0, 1] = 1

    def forward(self, x):
        """The readable formulation (the ``'readable'`` form): the Conv1d over time on an
        ``(N*H*W, C, T)`` copy."""
        nt, c, h, w = x.shape
        n = nt // self.num_segments
        y = x.view(n, self.num_segments, c, h, w).permute(0, 3, 4, 2, 1)  # (N, H, W, C, T)
        y = self.conv(y.reshape(n * h * w, c, self.num_segments))  # (N*H*W, C, T)
        return y.view(n, h, w, c, self.num_segments).permute(0, 4, 3, 1, 2).reshape(nt, c, h, w)

    def interact(self, x, out=None, recording=False):
        """Fast forms: three channel-scaled adds of neighbouring frames, into ``out`` if given
        (same shape, not aliasing ``x``); ``recording``: out of place and 4-D like the
        activations (see ``MSM.blend``)."""
        nt, c, h, w = x.shape
        n = nt // self.num_segments
        if recording:
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


def motion_and_selection(mam, msm, x, channels_last):
    """Fast forms, up to the full-size work: MAM's accumulated C/64 channels
    ``(N*T, C/64, H, W)`` and MSM's weight of motion ``(N, C, H, W)``."""
    accumulated = mam.accumulate(x, channels_last)  # (N, T, C/64, H, W)
    # 1x1 conv and temporal mean commute: average the C/64 channels, not the C
    motion_mean = mam.project(accumulated.mean(dim=1), channels_last)  # (N, C, H, W)
    return accumulated.flatten(0, 1), msm.selection(motion_mean, x)


def fast_temporal(mam, msm, tim, x, core=None):
    """The fast form of ``tim(msm(mam(x), x))`` for ``(N*T, C, H, W)`` (eager, not recording).

    ``core``: the function of the blend + TIM with autograd on, ``select_and_interact``'s
    arguments (default: it; ``'compiled'``: ``compiled_select_and_interact``, also in
    inference). Without autograd and core, the blend and TIM write into buffers: MSM's into the
    motion and TIM's into ``x``, which the caller (the block) no longer needs."""
    nhwc = is_channels_last(x)  # the projections' results in the activations' memory format
    reduced, w_motion = motion_and_selection(mam, msm, x, nhwc)
    if core is not None or torch.is_grad_enabled():  # one autograd function: see mas_fused
        return (core or select_and_interact)(x, reduced, mam.conv3.weight, w_motion,
                                             tim.conv.weight, nhwc)
    selected = msm.blend(mam.project(reduced, nhwc), x, w_motion)  # into the motion
    return tim.interact(selected, out=x)


def recorded_temporal(mam, msm, tim, x):
    """The out-of-place form exporters record and compilers fuse (MAM's 1x1 convs as NHWC
    matmuls: compilers run convolutions channels-last)."""
    reduced, w_motion = motion_and_selection(mam, msm, x, True)
    selected = msm.blend(mam.project(reduced, True), x, w_motion, recording=True)
    return tim.interact(selected, recording=True)


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
        if self.form == 'readable':
            return self.TIM(self.MSM(self.MAM(x), x))
        if recording_graph():
            return recorded_temporal(self.MAM, self.MSM, self.TIM, x)
        check_block(self)
        core = compiled_select_and_interact if self.form == 'compiled' else None
        return fast_temporal(self.MAM, self.MSM, self.TIM, x, core)


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


class FormMismatch(UserError):
    """A MAS block's fast form no longer computes what its readable modules compute."""


FAST_CORE = ('ops/mas_fused.py: SelectInteract (training), select_interact_math and '
             'select_interact_backward_math (compiled)')
# where each module's fast form lives: the way out a mismatch names
FAST_FORMS = {
    'MAM': 'MAM.accumulate / MAM.project in ops/MASNet.py (or write the change into '
           'MAM.accumulate_frames, which every form calls)',
    'MSM': f'MSM.selection / MSM.blend in ops/MASNet.py and {FAST_CORE}',
    'TIM': f'TIM.interact in ops/MASNet.py and {FAST_CORE}',
}
CHECK_TOLERANCE = 1e-8  # float64, relative to the largest value compared
CHECK_SHAPE = (2, 3, 3)  # N clips of H x W: tiny, yet every frame, channel and tap is used


class _checked:
    keys = set()  # (block class, module classes, C, T, hyper-parameters) checked in this process


def check_forms(model):
    """Check every fast-form MAS block of `model` against its readable modules (see
    ``check_block``) and return `model`; the model's own tensors are not touched."""
    for module in model.modules():
        if isinstance(module, _MASMixin) and module.form != 'readable':
            check_block(module)
    return model


def check_block(block):
    """Raise ``FormMismatch`` where the fast form of `block` (inference, training with its
    hand-written backward, the compiled core run uncompiled, the recorded path) disagrees with
    ``TIM(MSM(MAM(x), x))`` in float64 (outputs, and input and parameter gradients); once per
    block shape and hyper-parameters per process, on float64 copies of its modules."""
    modules = (block.MAM, block.MSM, block.TIM)
    key = (type(block), *(type(m) for m in modules), block.MAM.conv1.in_channels,
           block.num_segments, *(tuple(hyperparameter_values(m).items()) for m in modules))
    if key in _checked.keys:
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only wait on each other
    try:
        with torch.inference_mode(False), torch.autocast('cpu', enabled=False):
            compare_copies(modules, block.num_segments)
    except FormMismatch as error:
        raise FormMismatch(f'MAS block check ({type(block).__name__}, '
                           f'{block.MAM.conv1.in_channels} channels, T={block.num_segments}): '
                           f'{error}') from None
    finally:
        torch.set_num_threads(threads)
    _checked.keys.add(key)


def compare_copies(modules, num_segments):
    """``compare_modules`` and ``compare_chains`` on random float64 copies of `modules`."""
    with torch.no_grad():
        mam, msm, tim = (float64_copy(m) for m in modules)
        generator = torch.Generator().manual_seed(0)
        for m in (mam, msm, tim):
            randomize(m, generator)
        n, h, w = CHECK_SHAPE
        x = torch.randn(n * num_segments, mam.conv1.in_channels, h, w, generator=generator,
                        dtype=torch.float64)
    compare_modules(mam, msm, tim, x, generator)
    compare_chains(mam, msm, tim, x)


def float64_copy(module):
    """A deep copy of `module` on the CPU in float64, without hooks (also of a DataParallel
    replica, whose parameters are not leaves): the checks never touch the model's tensors,
    statistics or hooks."""
    memo = {id(t): t.detach().to('cpu', torch.float64 if t.is_floating_point() else t.dtype,
                                 copy=True) for t in module.buffers()}
    memo.update((id(p), nn.Parameter(p.detach().to('cpu', torch.float64, copy=True)))
                for p in module.parameters())
    module = copy.deepcopy(module, memo)
    for m in module.modules():  # the model's hooks (FLOP counters, Grad-CAM) stay its own
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                      m._backward_pre_hooks):
            hooks.clear()
    return module


def randomize(module, generator):
    """Random parameters and BatchNorm statistics (TIM's shift taps and BN's ones and zeros
    would hide differences)."""
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if not tensor.is_floating_point():
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        if name.endswith('running_var'):
            tensor.copy_(noise.abs() * 0.5 + 0.5)
        elif tensor.dim() == 1:  # BatchNorm weight, bias, mean
            tensor.copy_(noise * 0.2 + (1 if name.endswith('weight') else 0))
        else:
            tensor.copy_(noise / tensor[0].numel() ** 0.5)


def run(fn, inputs, params, train):
    """``fn(*inputs)`` and, with `train`, the gradients of ``(output * upstream).sum()``
    w.r.t. `inputs` and `params` (zeros where unused), upstream random of a fixed seed."""
    inputs = [t.detach().clone().requires_grad_(train) for t in inputs]
    with torch.set_grad_enabled(train):
        out = fn(*inputs)
        if not train:
            return [out.detach().clone()]
        wrt = inputs + list(params)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1),
                               dtype=out.dtype)
        grads = torch.autograd.grad((out * upstream).sum(), wrt, allow_unused=True)
    return [out.detach()] + [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]


def compare(module_names, path, readable, fast, inputs, params, train):
    """Run `readable` and `fast` on `inputs` ``{name: tensor}`` (`params` ``{name: tensor}``
    of modules in train or eval mode alike); a ``FormMismatch`` naming `module_names` and
    `path` where their outputs or (with `train`) gradients differ. `readable` may also be its
    results, as ``run`` returns them."""
    args = (list(inputs.values()), list(params.values()), train)
    want = readable if isinstance(readable, list) else run(readable, *args)
    got = run(fast, *args)
    what = ['the output'] + [f'the gradient of {name}' for name in (*inputs, *params)]
    for name, g, e in zip(what, got, want):
        difference = (g - e).abs().max().item()
        if not difference <= CHECK_TOLERANCE * (1 + e.abs().max().item()):
            raise FormMismatch(mismatch_message(module_names, path, name, difference))
    return want


def mismatch_message(module_names, path, what, difference):
    if len(module_names) == 1:
        name = module_names[0]
        return (f'{name}.forward (the readable {name}) and its fast form '
                f'differ by {difference:.3g} in {what} ({path}, float64): run with --mas_form '
                f'readable (or MASNET_FORM=readable) to compute the edited {name}, or update '
                f'its fast form: {FAST_FORMS[name]}')
    return (f'the fast form\'s {path} and TIM(MSM(MAM(x), x)) differ by '
            f'{difference:.3g} in {what} (float64) although each module agrees with its fast '
            f'form: run with --mas_form readable (or MASNET_FORM=readable), or update {FAST_CORE}')


def named_parameters(**modules):
    return {f'{prefix}.{name}': p for prefix, module in modules.items()
            for name, p in module.named_parameters()}


def compare_modules(mam, msm, tim, x, generator):
    """Each readable module against the fast pieces that stand for it, in inference (eval,
    buffers overwritten) and in training (train mode, gradients)."""
    t = mam.num_segments
    motion = torch.randn(x.shape, generator=generator, dtype=torch.float64)

    def fast_mam(a):
        return mam.project(mam.accumulate(a).flatten(0, 1))

    def fast_mam_mean(a):  # the fast form averages MAM's C/64 channels over time, then projects
        return mam.project(mam.accumulate(a).mean(dim=1))

    def fast_msm(m, a):
        return msm.blend(m.clone(), a, msm.selection(clip_mean(m, t), a))

    def fast_tim(a):
        return tim.interact(a, out=None if torch.is_grad_enabled() else torch.empty_like(a))

    checks = (('MAM', mam, {'x': x}, mam, fast_mam),
              ('MAM', mam, {'x': x}, lambda a: clip_mean(mam(a), t), fast_mam_mean),
              ('MSM', msm, {'motion': motion, 'appearance': x}, msm, fast_msm),
              ('TIM', tim, {'x': x}, tim, fast_tim))
    for train in (False, True):
        for name, module, inputs, readable, fast in checks:
            module.train(train)
            compare((name,), 'training' if train else 'inference', readable, fast, inputs,
                    named_parameters(**{name: module}), train)


def compare_chains(mam, msm, tim, x):
    """The whole fast chain of each path against ``tim(msm(mam(x), x))`` (NCHW, and NHWC where
    the path has an NHWC branch)."""
    params = named_parameters(MAM=mam, MSM=msm, TIM=tim)

    def readable(a):
        return tim(msm(mam(a), a))

    def fused_uncompiled(*args):
        return FusedSelectInteract.apply(*args[:5], run_uncompiled)

    nhwc = x.contiguous(memory_format=torch.channels_last)
    paths = (
        ('inference path (MSM.blend and TIM.interact into buffers)', False, (x, nhwc),
         lambda a: fast_temporal(mam, msm, tim, a.clone())),
        ('training path (ops/mas_fused.py SelectInteract and its backward)', True, (x, nhwc),
         lambda a: fast_temporal(mam, msm, tim, a)),
        ('compiled core, run uncompiled (select_interact_math, select_interact_backward_math)',
         True, (x,), lambda a: fast_temporal(mam, msm, tim, a, fused_uncompiled)),
        ('recorded (export) path (recorded_temporal)', True, (x,),
         lambda a: recorded_temporal(mam, msm, tim, a)),
    )
    expected = {}  # (train, NHWC): the readable chain's results, computed once
    for path, train, layouts, fast in paths:
        for m in (mam, msm, tim):
            m.train(train)
        for a in layouts:
            key = (train, a is nhwc)
            expected[key] = compare(('MAM', 'MSM', 'TIM'), path, expected.get(key, readable),
                                    fast, {'x': a}, params, train)


def tim_macs(module, input_shape):
    """Multiply-adds of a MAS block's TIM counted as the depthwise temporal conv it is (3 per
    output element), from the block's input shape."""
    nt, _, h, w = input_shape
    conv = module.conv1  # TIM runs on conv1's output
    size = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
            zip((h, w), conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
    return 3 * nt * conv.out_channels * size[0] * size[1]


# what FLOP counters miss: TIM runs as elementwise adds, which fvcore does not count
UNCOUNTED_MACS = {MASBottleneck: tim_macs, MASBasicBlock: tim_macs}
