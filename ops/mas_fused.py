"""The element-wise core of a MAS block, in the forms that cost the least time and memory.

ops/MASNet.py builds the modules (parameters in the release's layout); this file holds the
arithmetic they share:

- ``pointwise_conv``: MAM's thin 1x1 convs (C <-> C/64) as batched matmuls (eager), or as
  one channels-last matmul (``pointwise_conv_channels_last``, for compiled graphs);
- ``temporal_conv``: TIM's depthwise temporal conv (kernel 3, zero padding) as three
  channel-scaled adds of neighbouring frames, optionally into a given buffer;
- ``SelectInteract``: for training, MSM's blend of motion and appearance followed by TIM, as one
  autograd function that saves only its small inputs. Autograd through the plain ops keeps two
  extra full-size activations per block alive until backward (the projected motion, saved by
  the blend, and the blend, saved by TIM); here backward recomputes the motion from the reduced
  C/64-channel features (one thin matmul) and the blend from it, which cuts the training-step
  memory the modules add by two thirds for about 1% more compute.

Full-size tensors are ``(N, T, C, H, W)`` views of the ``(N*T, C, H, W)`` activations.
"""
import torch


def pointwise_conv(x, weight):
    """A bias-free 1x1 convolution computed as a batched matmul.

    x: ``(B, C_in, H, W)``, weight: ``(C_out, C_in, 1, 1)``; returns ``(B, C_out, H, W)``.
    MAM's 1x1 convs have very few channels on one side (C/64), a shape for which oneDNN's
    convolution is several times slower than a matmul on CPU (forward and backward).
    """
    b, c_in, h, w = x.shape
    weight = weight.reshape(1, -1, c_in).expand(b, -1, -1)  # (B, C_out, C_in)
    return torch.bmm(weight, x.reshape(b, c_in, h * w)).view(b, -1, h, w)


def pointwise_conv_channels_last(x, weight):
    """The same 1x1 convolution as one matmul over positions: ``(B, H, W, C_in) @ (C_in, C_out)``.

    For graph compilers, which run convolutions channels-last: this form reads and writes that
    layout directly, where the batched matmul forces layout changes around it (torch.compile
    on CPU: compiled MAS-ResNet-50 inference 1.08x the compiled ResNet-50 instead of 1.13x).
    """
    return torch.matmul(x.permute(0, 2, 3, 1), weight.flatten(1).t()).permute(0, 3, 1, 2)


def temporal_taps(weight):
    """TIM's Conv1d weight ``(C, 1, 3)`` as three ``(1, C, 1, 1)`` taps for frames t-1, t, t+1."""
    c = weight.shape[0]
    return weight.view(c, 3).t().reshape(3, 1, c, 1, 1).unbind(0)


def temporal_conv(x, weight, out=None):
    """TIM's depthwise conv over time: ``out[t] = k0 * x[t-1] + k1 * x[t] + k2 * x[t+1]``.

    x: ``(N, T, C, H, W)``; weight: ``(C, 1, 3)``; ``out``, if given, a buffer of x's shape that
    does not alias x. Frames outside the clip are zeros (the Conv1d's padding).
    """
    k_prev, k_same, k_next = temporal_taps(weight)
    out = torch.mul(x, k_same, out=out)
    out[:, 1:].addcmul_(x[:, :-1], k_prev)  # frame t-1
    out[:, :-1].addcmul_(x[:, 1:], k_next)  # frame t+1
    return out


def temporal_conv_transpose(grad, weight):
    """The adjoint of ``temporal_conv`` (its input gradient): the same taps, mirrored in time."""
    k_prev, k_same, k_next = temporal_taps(weight)
    out = grad * k_same
    out[:, :-1].addcmul_(grad[:, 1:], k_prev)  # x[t] fed out[t+1] through k_prev
    out[:, 1:].addcmul_(grad[:, :-1], k_next)  # x[t] fed out[t-1] through k_next
    return out


def _channel_sum(x):
    """Sum of ``(N, T, C, H, W)`` over everything but C, as ``(C,)``."""
    return x.sum(dim=(0, 1, 3, 4))


class SelectInteract(torch.autograd.Function):
    """``TIM(lerp(appearance, project(reduced), w))`` saving only appearance and small tensors.

    Inputs: appearance ``(N*T, C, H, W)``; reduced ``(N*T, r, H, W)``, MAM's accumulated C/64
    channels; projection ``(C, r, 1, 1)``, MAM's conv3 weight; w ``(N, 1, C, H, W)``, MSM's
    weight of motion; taps ``(C, 1, 3)``, TIM's weight. Output ``(N*T, C, H, W)``.
    Computed in appearance's dtype (the activations' dtype under autocast).
    """

    @staticmethod
    def forward(ctx, appearance, reduced, projection, w, taps):
        nt, c, h, width = appearance.shape
        ctx.input_dtypes = [t.dtype for t in (reduced, projection, w, taps)]
        reduced, projection, w, taps = (t.to(appearance.dtype) for t in (reduced, projection, w, taps))
        a = appearance.view(w.shape[0], nt // w.shape[0], c, h, width)  # (N, T, C, H, W)
        motion = pointwise_conv(reduced, projection).view_as(a)
        selected = torch.lerp(a, motion, w, out=motion)
        ctx.save_for_backward(appearance, reduced, projection, w, taps)
        return temporal_conv(selected, taps).view(nt, c, h, width)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        appearance, reduced, projection, w, taps = ctx.saved_tensors
        nt, c, h, width = appearance.shape
        a = appearance.view(w.shape[0], nt // w.shape[0], c, h, width)  # (N, T, C, H, W)
        grad = grad_out.to(a.dtype).contiguous().view_as(a)
        # recompute: motion - appearance, and the blend
        difference = pointwise_conv(reduced, projection).view_as(a).sub_(a)
        selected = torch.addcmul(a, w, difference)
        grad_taps = torch.stack([
            _channel_sum(grad[:, 1:] * selected[:, :-1]),
            _channel_sum(grad * selected),
            _channel_sum(grad[:, :-1] * selected[:, 1:])], dim=1).view(c, 1, 3)
        del selected
        grad_selected = temporal_conv_transpose(grad, taps)
        grad_w = (grad_selected * difference).sum(dim=1, keepdim=True)  # (N, 1, C, H, W)
        del difference
        grad_motion = grad_selected * w
        grad_appearance = grad_selected.sub_(grad_motion)  # grad * (1 - w)
        grad_motion = grad_motion.view(nt, c, h, width)
        grad_reduced = pointwise_conv(grad_motion, projection.transpose(0, 1))
        grad_projection = torch.bmm(grad_motion.view(nt, c, h * width),
                                    reduced.view(nt, -1, h * width).transpose(1, 2)).sum(dim=0)
        grads = (grad_reduced, grad_projection.view(projection.shape), grad_w, grad_taps)
        return (grad_appearance.view(nt, c, h, width),
                *(g.to(dtype) for g, dtype in zip(grads, ctx.input_dtypes)))


def select_and_interact(appearance, reduced, projection, w, taps):
    """See ``SelectInteract``; the autograd entry point used by MAS blocks in training."""
    return SelectInteract.apply(appearance, reduced, projection, w, taps)
