"""torch.hub entry points: build MAS-Net / TSM / TSN models from a local clone.

    model = torch.hub.load('/path/to/MAS-Net', 'temporal_model', source='local',
                           weights='ckpt.best.pth.tar')
    model.categories                                  # the class names the checkpoint records
    model = torch.hub.load('/path/to/MAS-Net', 'masnet_resnet50', source='local',
                           weights='release.pth.tar', num_classes=174, num_segments=8)

Weights come only from a local file (``weights``); nothing is ever downloaded. With
``weights``, the temporal type, arch, segments, input size and class names are the
checkpoint's (a given type, arch, segment or class count must agree with what it records;
the ``masnet_*``/``tsm_*``/``tsn_*`` entries fix type and arch, ``temporal_model`` takes them
from the file; a given input_size is used as is); ``categories`` (a
name list) is checked against the recorded names, or names the classes of a checkpoint that
records none (else ``model.categories`` is None); other keyword arguments: ``full_res``.
Without ``weights`` the model is randomly initialised (default 174 classes, 8 segments,
224 px; other keyword arguments go to TemporalModel). The model is returned in eval mode;
its input is ``(N, T*3, H, W)`` (or ``(N, T, 3, H, W)``) normalised RGB, its output
``(N, num_classes)``. A weights file that needs more than tensors, numbers and numpy scalars to
unpickle is refused unless ``trust_checkpoint=True`` (code in it can run: only for files you
trust).
"""
dependencies = ['torch', 'numpy', 'cv2']


def _build(temporal_type, arch, weights=None, num_classes=None, num_segments=None,
           input_size=None, categories=None, trust_checkpoint=False, **kwargs):
    from ops.checkpoint import CheckpointError, checkpoint_categories, read_checkpoint
    from ops.models import TemporalModel, model_from_checkpoint

    if weights is None:
        model = TemporalModel(num_classes or 174, num_segments or 8, temporal_type or 'MASNet',
                              arch or 'resnet50', pretrain='none', partial_bn=False,
                              input_size=input_size or 224, **kwargs)
        model.categories = list(categories) if categories is not None else None
        return model.eval()
    checkpoint = read_checkpoint(weights, trust=trust_checkpoint)
    names = categories
    if categories is not None or checkpoint.get('categories') is not None:
        names = checkpoint_categories(checkpoint, weights, categories, 'categories=')
    model = model_from_checkpoint(checkpoint, weights, len(names) if names else None,
                                  num_segments, temporal_type, arch, input_size,
                                  default_segments=8, **kwargs)
    if num_classes is not None and num_classes != model.num_class:
        raise CheckpointError(f"checkpoint '{weights}' has {model.num_class} classes, not "
                              f"num_classes={num_classes}")
    model.categories = names
    return model.eval()


def masnet_resnet50(weights=None, num_classes=None, num_segments=None, **kwargs):
    """MAS-Net ResNet-50 (the paper's model)."""
    return _build('MASNet', 'resnet50', weights, num_classes, num_segments, **kwargs)


def masnet_resnet101(weights=None, num_classes=None, num_segments=None, **kwargs):
    """MAS-Net ResNet-101."""
    return _build('MASNet', 'resnet101', weights, num_classes, num_segments, **kwargs)


def tsm_resnet50(weights=None, num_classes=None, num_segments=None, **kwargs):
    """TSM ResNet-50 (residual temporal shift), the baseline."""
    return _build('TSM', 'resnet50', weights, num_classes, num_segments, **kwargs)


def tsn_resnet50(weights=None, num_classes=None, num_segments=None, **kwargs):
    """TSN ResNet-50 (no temporal module)."""
    return _build('TSN', 'resnet50', weights, num_classes, num_segments, **kwargs)


def temporal_model(temporal_type=None, arch=None, weights=None, num_classes=None,
                   num_segments=None, **kwargs):
    """Any --type / --arch combination of main.py (default: the checkpoint's, else MASNet
    ResNet-50)."""
    return _build(temporal_type, arch, weights, num_classes, num_segments, **kwargs)
