"""torch.hub entry points: build MAS-Net / TSM / TSN models from a local clone.

    model = torch.hub.load('/path/to/MAS-Net', 'masnet_resnet50', source='local',
                           weights='ckpt.best.pth.tar', num_classes=174, num_segments=8)

Weights come only from a local file (``weights``); nothing is ever downloaded. Without
``weights`` the model is randomly initialised. A weights file that needs more than tensors,
numbers and numpy scalars to unpickle is refused unless ``trust_checkpoint=True`` (code in it
can run: only for files you trust). The model is returned in eval mode; its input
is ``(N, T*3, H, W)`` (or ``(N, T, 3, H, W)``) normalised RGB, its output ``(N, num_classes)``.
"""
dependencies = ['torch', 'numpy', 'cv2']


def _build(temporal_type, arch, weights=None, num_classes=174, num_segments=8, input_size=224,
           trust_checkpoint=False, **kwargs):
    from ops.checkpoint import load_model_weights
    from ops.models import TemporalModel

    model = TemporalModel(num_classes, num_segments, temporal_type, arch, pretrain='none',
                          partial_bn=False, input_size=input_size, **kwargs)
    if weights is not None:
        load_model_weights(model, weights, trust=trust_checkpoint)
    return model.eval()


def masnet_resnet50(weights=None, num_classes=174, num_segments=8, **kwargs):
    """MAS-Net ResNet-50 (the paper's model)."""
    return _build('MASNet', 'resnet50', weights, num_classes, num_segments, **kwargs)


def masnet_resnet101(weights=None, num_classes=174, num_segments=8, **kwargs):
    """MAS-Net ResNet-101."""
    return _build('MASNet', 'resnet101', weights, num_classes, num_segments, **kwargs)


def tsm_resnet50(weights=None, num_classes=174, num_segments=8, **kwargs):
    """TSM ResNet-50 (residual temporal shift), the baseline."""
    return _build('TSM', 'resnet50', weights, num_classes, num_segments, **kwargs)


def tsn_resnet50(weights=None, num_classes=174, num_segments=8, **kwargs):
    """TSN ResNet-50 (no temporal module)."""
    return _build('TSN', 'resnet50', weights, num_classes, num_segments, **kwargs)


def temporal_model(temporal_type='MASNet', arch='resnet50', weights=None, num_classes=174,
                   num_segments=8, **kwargs):
    """Any --type / --arch combination of main.py."""
    return _build(temporal_type, arch, weights, num_classes, num_segments, **kwargs)
