"""torch.hub entry points: build MAS-Net / TSM / TSN models from a local clone.

    model = torch.hub.load('/path/to/MAS-Net', 'temporal_model', source='local',
                           weights='ckpt.best.pth.tar')
    model.categories                                  # the class names the checkpoint records
    model = torch.hub.load('/path/to/MAS-Net', 'masnet_resnet50', source='local',
                           weights='release.pth.tar', num_classes=174, num_segments=8)

Weights come only from a local file (``weights``); nothing is ever downloaded. The
``<type>_<arch>`` entries (``masnet_resnet50``, ``tsm_resnet101``, ...) are made when hubconf.py
is loaded, one per temporal type of the registry in ops/temporal.py and arch of HUB_ARCHS; they
fix type and arch, ``temporal_model`` takes them from the file. With ``weights``, the temporal
type, arch, segments, input size and class names are the checkpoint's (a given type, arch,
segment or class count must agree with what it records; a given input_size is used as is);
``categories`` (a name list) is checked against the recorded names, or names the classes of a
checkpoint that records none (else ``model.categories`` is None); other keyword arguments:
``full_res``. Without ``weights`` the model is randomly initialised (default 174 classes, 8
segments, 224 px; other keyword arguments go to ops.models.build_model). The model is returned
in eval mode; its input is ``(N, T*3, H, W)`` (or ``(N, T, 3, H, W)``) normalised RGB, its
output ``(N, num_classes)``. A weights file that needs more than tensors, numbers and numpy
scalars to unpickle is refused unless ``trust_checkpoint=True`` (code in it can run: only for
files you trust).
"""
dependencies = ['torch', 'numpy', 'cv2']

from ops import temporal as _temporal  # noqa: E402  (a module: not listed as an entry point)

# the backbones that get a `<type>_<arch>` entry point for every registered temporal type
HUB_ARCHS = ('resnet50', 'resnet101')


def _build(temporal_type, arch, weights=None, num_classes=None, num_segments=None,
           input_size=None, categories=None, trust_checkpoint=False, **kwargs):
    from ops.checkpoint import CheckpointError, checkpoint_categories, read_checkpoint
    from ops.models import build_model, model_from_checkpoint

    if weights is None:
        model = build_model(num_classes or 174, num_segments or 8, temporal_type,
                            arch or 'resnet50', pretrain='none', input_size=input_size or 224,
                            **kwargs)
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


def _entry_point(temporal_type, arch):
    """The hub entry point ``<type>_<arch>`` (e.g. masnet_resnet50) of one registered type."""
    def entry(weights=None, num_classes=None, num_segments=None, **kwargs):
        return _build(temporal_type, arch, weights, num_classes, num_segments, **kwargs)

    description = _temporal.temporal_module(temporal_type).description
    entry.__name__ = entry.__qualname__ = f'{temporal_type.lower()}_{arch}'
    entry.__doc__ = (f"{temporal_type} {arch}" + (f" (temporal modules: {description})"
                                                  if description else '')
                     + ": see hubconf.py's docstring for the arguments.")
    return entry


def _entry_points():
    """``{name: entry point}`` of every registered temporal type on each of HUB_ARCHS."""
    return {f'{temporal_type.lower()}_{arch}': _entry_point(temporal_type, arch)
            for temporal_type in _temporal.temporal_types() for arch in HUB_ARCHS}


def temporal_model(temporal_type=None, arch=None, weights=None, num_classes=None,
                   num_segments=None, **kwargs):
    """Any --type / --arch combination of main.py (default: the checkpoint's, else MASNet
    ResNet-50)."""
    return _build(temporal_type, arch, weights, num_classes, num_segments, **kwargs)


globals().update(_entry_points())
