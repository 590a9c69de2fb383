"""The element-wise core of a MAS block, in the forms that cost the least time and memory.

ops/MASNet.py builds the modules (parameters in the release's layout); this file holds the
arithmetic they share:

- ``pointwise_conv``: MAM's thin 1x1 convs (C <-> C/64) as matmuls, in either memory format;
- ``temporal_conv``: TIM's depthwise temporal conv (kernel 3, zero padding) as three
  channel-scaled adds of neighbouring frames, optionally into a given buffer;
- ``SelectInteract``: for training, MSM's blend of motion and appearance followed by TIM, as one
  autograd function that saves only its small inputs (the block's ``'fast'`` form). Autograd
  through the plain ops keeps two extra full-size activations per block alive until backward
  (the projected motion, saved by the blend, and the blend, saved by TIM); here backward
  recomputes the motion from the reduced C/64-channel features (one thin matmul) and the blend
  from it: less than half the training-step memory the modules add, at no cost in time
  (docs/speed.md#the-forms-of-a-mas-block).
- ``select_interact_math`` / ``compiled_select_and_interact``: the same chain written as plain
  element-wise ops for a compiler, and that function compiled on its own (the block's
  ``'compiled'`` form): torch.compile generates one C++/OpenMP loop (CPU) or Triton kernel
  (CUDA) for the forward and a few for the backward, instead of a dozen passes over the
  activation. It compiles at its first call (tens of seconds; cached on disk by Inductor)
  and falls back to ``select_and_interact``, with one warning, where compiling fails.

Full-size tensors are 5-D views (``frames``) of the ``(N*T, C, H, W)`` activations, in their
memory order: ``(N, T, C, H, W)`` for NCHW, ``(N, T, H, W, C)`` for channels-last models.
"""
import warnings

import torch
import torch.nn.functional as F


def is_channels_last(x):
    """True for a 4-D tensor laid out NHWC (and not also NCHW, as tensors with H = W = 1 are)."""
    return (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def pointwise_conv(x, weight, channels_last=False):
    """A bias-free 1x1 convolution computed as a matmul.

    x: ``(B, C_in, H, W)``, weight: ``(C_out, C_in, 1, 1)``; returns ``(B, C_out, H, W)``.
    MAM's 1x1 convs have very few channels on one side (C/64), a shape for which oneDNN's
    convolution is several times slower than a matmul on CPU (forward and backward).
    NCHW: one ``(C_out, C_in) @ (C_in, H*W)`` per image (a batched matmul). ``channels_last``:
    one ``(B*H*W, C_in) @ (C_in, C_out)`` over every position, with an NHWC result, for
    channels-last models and for graph compilers, which run convolutions channels-last (no
    layout changes around it: docs/speed.md).
    """
    if channels_last:
        return torch.matmul(x.permute(0, 2, 3, 1), weight.flatten(1).t()).permute(0, 3, 1, 2)
    b, c_in, h, w = x.shape
    weight = weight.reshape(1, -1, c_in).expand(b, -1, -1)  # (B, C_out, C_in)
    return torch.bmm(weight, x.reshape(b, c_in, h * w)).view(b, -1, h, w)


def frames(x, num_segments, channels_last=False):
    """The activation ``x`` ``(N*T, C, H, W)`` as a 5-D view in its memory order, frames second:
    ``(N, T, C, H, W)`` for NCHW, ``(N, T, H, W, C)`` for ``channels_last`` (NHWC)."""
    nt, c, h, w = x.shape
    if channels_last:
        return x.permute(0, 2, 3, 1).view(nt // num_segments, num_segments, h, w, c)
    return x.view(nt // num_segments, num_segments, c, h, w)


def activations(x, channels_last=False):
    """The inverse of ``frames``: ``(N*T, C, H, W)``, in the memory format ``frames`` read."""
    if channels_last:
        n, t, h, w, c = x.shape
        return x.reshape(n * t, h, w, c).permute(0, 3, 1, 2)
    return x.flatten(0, 1)


def per_clip(x, channels_last=False):
    """A per-clip tensor ``(N, C, H, W)`` shaped to broadcast over ``frames``' T axis."""
    return (x.permute(0, 2, 3, 1) if channels_last else x).unsqueeze(1)


def clip_mean(x, num_segments, channels_last=False):
    """The temporal mean ``(N, C, H, W)`` of the activation ``x``, in x's memory format
    (reducing over frames in memory order: far faster than a strided mean on NHWC)."""
    mean = frames(x, num_segments, channels_last).mean(dim=1)
    return mean.permute(0, 3, 1, 2) if channels_last else mean


def temporal_taps(weight, channels_last=False, width=1):
    """TIM's Conv1d weight ``(C, 1, 3)`` as three taps for frames t-1, t, t+1, shaped to
    broadcast over ``frames``: ``(C, 1, 1)``; for channels_last ``(width * C,)``, the channel
    taps repeated along a row (see ``temporal_conv``)."""
    c = weight.shape[0]
    taps = weight.view(c, 3).t()  # (3, C)
    return (taps.repeat(1, width) if channels_last else taps.reshape(3, c, 1, 1)).unbind(0)


def temporal_conv(x, weight, out=None, channels_last=False):
    """TIM's depthwise conv over time: ``out[t] = k0 * x[t-1] + k1 * x[t] + k2 * x[t+1]``.

    x: a ``frames`` view; weight: ``(C, 1, 3)``; ``out``, if given, a buffer of x's shape
    that does not alias x. Frames outside the clip are zeros (the Conv1d's padding).
    NHWC frames are computed as ``(N, T, H, W*C)`` rows: the element-wise kernels then run
    over W*C values at a time instead of C (faster at small C: docs/speed.md).
    """
    shape = x.shape
    if channels_last:
        x = x.flatten(3)  # (N, T, H, W*C)
        out = out.flatten(3) if out is not None else None
    k_prev, k_same, k_next = temporal_taps(weight, channels_last, shape[3])
    out = torch.mul(x, k_same, out=out)
    out[:, 1:].addcmul_(x[:, :-1], k_prev)  # frame t-1
    out[:, :-1].addcmul_(x[:, 1:], k_next)  # frame t+1
    return out.view(shape)


def temporal_conv_transpose(grad, weight, channels_last=False):
    """The adjoint of ``temporal_conv`` (its input gradient): the same taps, mirrored in time."""
    shape = grad.shape
    if channels_last:
        grad = grad.flatten(3)  # (N, T, H, W*C)
    k_prev, k_same, k_next = temporal_taps(weight, channels_last, shape[3])
    out = grad * k_same
    out[:, :-1].addcmul_(grad[:, 1:], k_prev)  # x[t] fed out[t+1] through k_prev
    out[:, 1:].addcmul_(grad[:, :-1], k_next)  # x[t] fed out[t-1] through k_next
    return out.view(shape)


def channel_sum(x, channels_last=False):
    """Sum of a ``frames`` view over everything but the channels, ``(C,)``."""
    return x.sum(dim=(0, 1, 2, 3) if channels_last else (0, 1, 3, 4))


class SelectInteract(torch.autograd.Function):
    """``TIM(lerp(appearance, project(reduced), w))`` saving only appearance and small tensors.

    Inputs: appearance ``(N*T, C, H, W)``; reduced ``(N*T, r, H, W)``, MAM's accumulated C/64
    channels; projection ``(C, r, 1, 1)``, MAM's conv3 weight; w ``(N, C, H, W)``, MSM's
    weight of motion; taps ``(C, 1, 3)``, TIM's weight; ``channels_last``: the activations
    are NHWC. Output ``(N*T, C, H, W)`` in the activations' memory format and dtype (autocast).
    """

    @staticmethod
    def forward(ctx, appearance, reduced, projection, w, taps, channels_last=False):
        cl = ctx.channels_last = channels_last
        ctx.input_dtypes = [t.dtype for t in (reduced, projection, w, taps)]
        small = (reduced, projection, w, taps)
        reduced, projection, w, taps = (t.to(appearance.dtype) for t in small)
        num_segments = appearance.shape[0] // w.shape[0]
        a = frames(appearance, num_segments, cl)
        motion = frames(pointwise_conv(reduced, projection, cl), num_segments, cl)
        selected = torch.lerp(a, motion, per_clip(w, cl), out=motion)
        ctx.save_for_backward(appearance, reduced, projection, w, taps)
        return activations(temporal_conv(selected, taps, channels_last=cl), cl)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        appearance, reduced, projection, w, taps = ctx.saved_tensors
        cl = ctx.channels_last
        nt, c, h, width = appearance.shape
        num_segments = nt // w.shape[0]
        layout = torch.channels_last if cl else torch.contiguous_format
        a = frames(appearance, num_segments, cl)
        grad = frames(grad_out.to(a.dtype).contiguous(memory_format=layout), num_segments, cl)
        w = per_clip(w, cl)
        # recompute: motion - appearance, and the blend
        difference = frames(pointwise_conv(reduced, projection, cl), num_segments, cl).sub_(a)
        selected = torch.addcmul(a, w, difference)
        grad_taps = torch.stack([
            channel_sum(grad[:, 1:] * selected[:, :-1], cl),
            channel_sum(grad * selected, cl),
            channel_sum(grad[:, :-1] * selected[:, 1:], cl)], dim=1).view(c, 1, 3)
        del selected
        grad_selected = temporal_conv_transpose(grad, taps, cl)
        grad_w = (grad_selected * difference).sum(dim=1)  # per clip
        grad_w = grad_w.permute(0, 3, 1, 2) if cl else grad_w  # (N, C, H, W)
        del difference
        grad_motion = grad_selected * w
        grad_appearance = activations(grad_selected.sub_(grad_motion), cl)  # grad * (1 - w)
        grad_motion = activations(grad_motion, cl)  # (N*T, C, H, W)
        grad_reduced = pointwise_conv(grad_motion, projection.transpose(0, 1), cl)
        grad_projection = torch.bmm(grad_motion.reshape(nt, c, h * width),
                                    reduced.reshape(nt, -1, h * width).transpose(1, 2)).sum(dim=0)
        grads = (grad_reduced, grad_projection.view(projection.shape), grad_w, grad_taps)
        return (grad_appearance, *(g.to(dtype) for g, dtype in zip(grads, ctx.input_dtypes)),
                None)


def select_and_interact(appearance, reduced, projection, w, taps, channels_last=False):
    """See ``SelectInteract``; the autograd entry point used by MAS blocks in training."""
    return SelectInteract.apply(appearance, reduced, projection, w, taps, channels_last)


def select_interact_math(appearance, reduced, projection, w, taps):
    """``SelectInteract``'s forward as out-of-place element-wise ops, for torch.compile.

    Same arguments (4-D tensors, one dtype, any memory format). The projection is a sum over
    MAM's C/64 channels, not a matmul, so that it stays inside the one fused loop with the blend
    and TIM's three taps.
    """
    nt, c, h, width = appearance.shape
    n, r = w.shape[0], reduced.shape[1]
    num_segments = nt // n
    motion = (reduced.unsqueeze(1) * projection.view(1, c, r, 1, 1)).sum(2)  # (N*T, C, H, W)
    w = w.unsqueeze(1).expand(n, num_segments, c, h, width).reshape(nt, c, h, width)
    selected = appearance + w * (motion - appearance)  # lerp(appearance, motion, w)
    clips = selected.view(n, num_segments, c, h, width)  # (N, T, C, H, W)
    previous = F.pad(clips[:, :-1], NO_PAD + (1, 0)).view(nt, c, h, width)  # frame t-1 at t
    following = F.pad(clips[:, 1:], NO_PAD + (0, 1)).view(nt, c, h, width)  # frame t+1 at t
    k_prev, k_same, k_next = temporal_taps(taps)  # (C, 1, 1) each
    return previous * k_prev + selected * k_same + following * k_next


NO_PAD = (0, 0, 0, 0, 0, 0)  # F.pad of (N, T, C, H, W): W, H and C untouched


def select_interact_backward_math(grad, appearance, reduced, projection, w, taps):
    """``SelectInteract.backward`` as out-of-place ops, for torch.compile: the gradients of
    ``select_interact_math`` w.r.t. its five inputs, given the output's ``grad``."""
    nt, c, h, width = appearance.shape
    n, r = w.shape[0], reduced.shape[1]
    clip = (n, nt // n, c, h, width)
    motion = (reduced.unsqueeze(1) * projection.view(1, c, r, 1, 1)).sum(2)  # (N*T, C, H, W)
    difference = (motion - appearance).view(clip)  # (N, T, C, H, W)
    w = w.unsqueeze(1)  # (N, 1, C, H, W)
    selected = appearance.view(clip) + w * difference
    grad = grad.view(clip)
    k_prev, k_same, k_next = temporal_taps(taps)
    grad_taps = torch.stack([
        (grad * F.pad(selected[:, :-1], NO_PAD + (1, 0))).sum(dim=(0, 1, 3, 4)),  # t-1 at t
        (grad * selected).sum(dim=(0, 1, 3, 4)),
        (grad * F.pad(selected[:, 1:], NO_PAD + (0, 1))).sum(dim=(0, 1, 3, 4))], dim=1)
    # TIM's adjoint: x[t] fed out[t+1] through k_prev and out[t-1] through k_next
    grad_selected = (grad * k_same + F.pad(grad[:, 1:], NO_PAD + (0, 1)) * k_prev
                     + F.pad(grad[:, :-1], NO_PAD + (1, 0)) * k_next)
    grad_w = (grad_selected * difference).sum(dim=1)  # (N, C, H, W)
    grad_motion = grad_selected * w
    grad_appearance = (grad_selected - grad_motion).view(nt, c, h, width)
    grad_motion = grad_motion.view(nt, c, h, width).unsqueeze(2)  # (N*T, C, 1, H, W)
    grad_reduced = (grad_motion * projection.view(1, c, r, 1, 1)).sum(1)  # (N*T, r, H, W)
    grad_projection = (grad_motion * reduced.unsqueeze(1)).sum(dim=(0, 3, 4))  # (C, r)
    return (grad_appearance, grad_reduced, grad_projection.view(c, r, 1, 1), grad_w,
            grad_taps.view(c, 1, 3))


class FusedSelectInteract(torch.autograd.Function):
    """``SelectInteract`` with its forward and backward each one function that ``run`` runs
    (``run_compiled``: compiled, the block's ``'compiled'`` form; tests pass a plain call).
    Like ``SelectInteract`` it saves only its inputs (compiling the forward alone, AOTAutograd
    saved full-size intermediates: docs/fused_block.md)."""

    @staticmethod
    def forward(ctx, appearance, reduced, projection, w, taps, run):
        ctx.run = run
        ctx.input_dtypes = [t.dtype for t in (reduced, projection, w, taps)]
        small = (reduced, projection, w, taps)
        reduced, projection, w, taps = (t.to(appearance.dtype) for t in small)
        ctx.save_for_backward(appearance, reduced, projection, w, taps)
        return run(select_interact_math, appearance, reduced, projection, w, taps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        appearance = ctx.saved_tensors[0]
        layout = (torch.channels_last if is_channels_last(appearance)
                  else torch.contiguous_format)
        grad_out = grad_out.to(appearance.dtype).contiguous(memory_format=layout)
        grads = ctx.run(select_interact_backward_math, grad_out, *ctx.saved_tensors)
        return (grads[0], *(g.to(dtype) for g, dtype in zip(grads[1:], ctx.input_dtypes)),
                None)


# graphs of the compiled core per process: grad mode x memory format x dtype x a few size guards
RECOMPILE_LIMIT = 32


class _Compiled:
    """The compiled functions, made at first use; ``failed`` once compiling failed."""
    functions = {}
    failed = False


def run_compiled(math, *args):
    """``math(*args)`` with `math` torch.compile'd (at its first call). Where compiling fails
    (no C++ compiler, no Triton, an unsupported platform) it warns once and runs `math`
    uncompiled; callers then use the fast form (``_Compiled.failed``)."""
    if not _Compiled.failed:
        if math not in _Compiled.functions:
            # dynamic shapes: one graph serves every block of a network (static shapes made 14
            # graphs for MAS-ResNet-50's 7 block shapes, past dynamo's limit of 8, beyond which
            # it runs the uncompiled function: far slower than the fast form)
            _Compiled.functions[math] = torch.compile(math, dynamic=True)
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return _Compiled.functions[math](*args)
        except Exception as error:  # any compiler failure; a real error recurs in eager below
            _Compiled.failed = True
            reason = (str(error).splitlines() or [''])[0]
            warnings.warn(f"MAS block form 'compiled': torch.compile failed "
                          f"({type(error).__name__}: {reason}); running the fast form instead",
                          RuntimeWarning)
    return math(*args)


def run_uncompiled(math, *args):
    """``math(*args)``: ``FusedSelectInteract``'s `run` for checking the compiled core's math
    without compiling it (ops.MASNet.check_forms, the tests)."""
    return math(*args)


def compiled_select_and_interact(appearance, reduced, projection, w, taps, channels_last=False):
    """``select_and_interact`` with forward and backward compiled (``FusedSelectInteract``);
    once compiling failed, ``select_and_interact`` itself."""
    if _Compiled.failed:
        return select_and_interact(appearance, reduced, projection, w, taps, channels_last)
    return FusedSelectInteract.apply(appearance, reduced, projection, w, taps, run_compiled)
