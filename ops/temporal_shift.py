"""TSM: the temporal shift of Lin et al., spliced into the ResNet blocks as a residual shift.

1/8 of the channels of a block's input take frame t+1, the next 1/8 take frame t-1, at the
start of the residual branch (the identity path is not shifted), as in the TSM paper.
"""

from archs.resnet import BasicBlock, Bottleneck


def temporal_shift(x, num_segments, fold_div=8):
    """TSM's shift: 1/fold_div of the channels take frame t+1, the next 1/fold_div take t-1.

    x: ``(N*T, C, H, W)``; missing neighbours at the clip ends are zeros. Returns a new tensor.
    """
    nt, c, h, w = x.shape
    x = x.view(nt // num_segments, num_segments, c, h, w)  # (N, T, C, H, W)
    fold = c // fold_div
    out = x.new_zeros(x.shape)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return out.view(nt, c, h, w)


class _ShiftMixin:
    """TSM's residual shift: a temporal shift at the start of the residual branch.

    ``hyperparameters``: the attributes that change the block's function (builders record them
    in the checkpoint's model description)."""
    hyperparameters = ('fold_div',)

    def __init__(self, inplanes, planes, stride=1, downsample=None, bias=True, num_segments=8,
                 fold_div=8):
        super().__init__(inplanes, planes, stride, downsample, bias)
        self.num_segments = num_segments
        self.fold_div = fold_div

    def shift_input(self, x):
        return temporal_shift(x, self.num_segments, self.fold_div)


class TSMBasicBlock(_ShiftMixin, BasicBlock):
    """BasicBlock with TSM's residual shift."""


class TSMBottleneck(_ShiftMixin, Bottleneck):
    """Bottleneck with TSM's residual shift."""


TSM_BLOCKS = {'basic': TSMBasicBlock, 'bottleneck': TSMBottleneck}
