"""TSN-style video classifier around a (temporal) ResNet backbone.

``TemporalModel`` runs the backbone on every sampled frame, applies dropout and a new
classifier (``new_fc``) per frame and averages the T frame scores (the segmental consensus
of TSN). Its ``state_dict`` names (``base_model.*``, ``new_fc.*``) are those of the MAS-Net
release.
"""
import logging
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from archs import ARCHS
from ops.checkpoint import (
    CheckpointError,
    check_finite,
    check_trained_settings,
    checkpoint_categories,
    load_pretrained_backbone,
    load_state_dict_checked,
    read_checkpoint,
    trained_settings,
)
from ops.optim import optim_policies
from ops.temporal import TEMPORAL_TYPES, build_backbone
from ops.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

logger = logging.getLogger('masnet.model')

# segments of a checkpoint that records none (the release's): the release's test.py default
RELEASE_TEST_SEGMENTS = 16


class TemporalModel(nn.Module):
    """Video classifier: backbone per frame -> dropout -> new_fc -> average over T.

    Args:
        num_class: number of action classes.
        num_segments: frames sampled per clip (T).
        base_model: the temporal type (the release's name for it; ``--type``, a checkpoint's
            'type', ``self.temporal_type``), one of ``TEMPORAL_TYPES`` ('MASNet', 'TSM', 'TSN').
        backbone: ResNet arch (``archs.ARCHS``).
        dropout: dropout before new_fc (the backbone's fc becomes this Dropout).
        consensus_type: 'avg' (the only consensus the release uses).
        partial_bn: TSN/TSM's partial BN (off in the release and by default): while
            training, every BatchNorm after the first whose weights came from initialisation
            (``pretrain`` here, ``init_norms_from`` after a --tune_from load) keeps its
            statistics and affine parameters frozen. BatchNorms that no weight file set (MAM
            ``bn1``, MSM ``bn_fc1`` under ImageNet init) always train.
        pretrain: 'imagenet' (torchvision weights from the local torch hub cache),
            'none', or the path of a weight file.
        input_size: side of the square network input (224 in the paper).
        full_res: evaluate on larger crops (input_size * 256/224) as in 3-crop testing.
        trust_checkpoint: unpickle a ``pretrain`` file in full (``--trust_checkpoint``).

    Input ``(N, T*3, H, W)``, output ``(N, num_class)``.

    MAS-Net's blocks compute their modules in a form chosen by ``ops.MASNet.set_form(form,
    model)``, ``$MASNET_FORM`` or ``--mas_form``: 'eager' (default), 'compiled', or
    'reference', the paper's readable math (ops/MASNet.py, docs/fused_block.md).
    """

    def __init__(self, num_class: int, num_segments: int, base_model: str = 'MASNet',
                 backbone: str = 'resnet50', dropout: float = 0.5, consensus_type: str = 'avg',
                 partial_bn: bool = False, pretrain: Optional[str] = 'imagenet',
                 input_size: int = 224, full_res: bool = False, trust_checkpoint: bool = False):
        super().__init__()
        if base_model not in TEMPORAL_TYPES:
            raise ValueError(f"unknown model type '{base_model}' "
                             f"(choose from {', '.join(TEMPORAL_TYPES)})")
        if backbone not in ARCHS:
            raise ValueError(f"unknown arch '{backbone}' (choose from {', '.join(ARCHS)})")
        if consensus_type != 'avg':
            raise ValueError(f"unknown consensus '{consensus_type}' (only 'avg' is supported)")
        self.num_class = num_class
        self.num_segments = num_segments
        self.temporal_type = base_model
        self.arch = backbone
        self.dropout = dropout
        self.input_size = input_size
        self.full_res = full_res
        self._enable_pbn = partial_bn
        self.initialised_norms = set()  # names of BatchNorms in base_model set by weight files

        self.base_model = build_backbone(backbone, base_model, num_segments)
        loaded = load_pretrained_backbone(self.base_model, backbone, pretrain,
                                          trust=trust_checkpoint)
        self.num_pretrained_tensors = len(loaded)
        self.init_norms_from(loaded)
        feature_dim = self.base_model.fc.in_features
        self.base_model.fc = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.new_fc = nn.Linear(feature_dim, num_class)
        nn.init.normal_(self.new_fc.weight, 0, 0.001)
        nn.init.constant_(self.new_fc.bias, 0)

    def init_norms_from(self, loaded_names: Iterable[str]) -> None:
        """Record the BatchNorms of base_model whose weights are among `loaded_names`
        (``state_dict`` keys, with or without the ``base_model.`` prefix)."""
        loaded = {k[len('base_model.'):] if k.startswith('base_model.') else k
                  for k in loaded_names}
        for name, module in self.base_model.named_modules():
            if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)) and f'{name}.weight' in loaded:
                self.initialised_norms.add(name)

    def partial_bn_norms(self) -> List[nn.Module]:
        """The BatchNorms partial BN freezes: all initialised ones but the first BatchNorm."""
        norms = [(name, m) for name, m in self.base_model.named_modules()
                 if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm))]
        return [m for name, m in norms[1:] if name in self.initialised_norms]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        x = x.view((-1, 3) + x.shape[-2:])  # (N*T, 3, H, W)
        features = self.base_model(x)  # (N*T, D)
        scores = self.new_fc(features)  # (N*T, num_class)
        return scores.view(n, -1, self.num_class).mean(dim=1)  # (N, num_class)

    def train(self, mode: bool = True) -> 'TemporalModel':
        """Switch mode; with partial BN, the BatchNorms of ``partial_bn_norms`` stay frozen."""
        super().train(mode)
        if self._enable_pbn and mode:
            for m in self.partial_bn_norms():
                m.eval()
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
        return self

    @property
    def crop_size(self) -> int:
        return self.scale_size if self.full_res else self.input_size

    @property
    def scale_size(self) -> int:
        return self.input_size * 256 // 224

    @property
    def input_mean(self) -> List[float]:
        return list(IMAGENET_MEAN)

    @property
    def input_std(self) -> List[float]:
        return list(IMAGENET_STD)

    def get_augmentation(self, flip: bool = True, mirror_map: Optional[Dict[int, int]] = None):
        """The training transform: multi-scale crop, (mirror-aware) flip, normalisation."""
        return build_transform('train', self.crop_size, self.scale_size, self.input_mean,
                               self.input_std, flip=flip, mirror_map=mirror_map)

    def get_optim_policies(self) -> List[Dict]:
        """Parameter groups with the release's lr / weight-decay multipliers (ops.optim)."""
        return optim_policies(self)


def model_from_checkpoint(checkpoint: Dict, path: str, num_class: Optional[int] = None,
                          num_segments: Optional[int] = None,
                          temporal_type: Optional[str] = None,
                          arch: Optional[str] = None, input_size: Optional[int] = None,
                          full_res: bool = False,
                          default_segments: int = RELEASE_TEST_SEGMENTS) -> TemporalModel:
    """Rebuild the TemporalModel a checkpoint was trained as, and load its weights.

    The model's settings come from the flags given here, then from the checkpoint's
    metadata ('type', 'arch', 'num_segments', 'input_size'; the release stores only
    'arch'), then from the defaults (MASNet, resnet50, `default_segments` = the release's
    test.py default 16, 224 px); a segment count taken from the defaults is logged.
    num_class: the classes the caller expects (None: the checkpoint's).
    Raises CheckpointError when the class count, segment count, type or arch does not fit.
    """
    state_dict = checkpoint['state_dict']
    fc_weight = state_dict.get('new_fc.weight')
    if fc_weight is None:
        raise CheckpointError(f"checkpoint '{path}' has no new_fc.weight: not a TemporalModel")
    num_class = fc_weight.shape[0] if num_class is None else num_class
    if fc_weight.shape[0] != num_class:
        raise CheckpointError(f"checkpoint '{path}' has {fc_weight.shape[0]} classes, "
                              f"the dataset has {num_class}")
    check_finite(checkpoint, path)
    trained = trained_settings(checkpoint)
    trained_segments = trained['num_segments']
    check_trained_settings(checkpoint, path, num_segments=num_segments, type=temporal_type,
                           arch=arch)
    arch = arch or trained['arch'] or 'resnet50'
    if arch not in ARCHS:
        raise CheckpointError(f"checkpoint '{path}' names arch '{arch}', not one of "
                              f"{', '.join(ARCHS)}; pass --arch")
    if not (num_segments or trained_segments):
        logger.info(f"'{path}' records no segment count: using {default_segments} "
                    f"(pass --test_segments to change it)")
    model = TemporalModel(num_class, num_segments or trained_segments or default_segments,
                          temporal_type or trained['type'] or 'MASNet', arch,
                          partial_bn=False, pretrain='none',
                          input_size=input_size or trained['input_size'] or 224,
                          full_res=full_res)
    load_state_dict_checked(model, state_dict, source=f"checkpoint '{path}'")
    return model


def load_classifier(path: str, categories: Optional[Sequence[str]] = None,
                    given_by: str = 'the given class names',
                    required: str = '--categories FILE or --dataset NAME', trust: bool = False,
                    **settings) -> Tuple[TemporalModel, List[str], Dict]:
    """The model of a checkpoint file, its class names and the checkpoint dict.

    The names are the checkpoint's; `categories` (from the user, described by `given_by`) must
    equal them, and are required (`required` says how to pass them) when the checkpoint records
    none. trust: unpickle the file in full (--trust_checkpoint). settings: num_segments,
    temporal_type, arch, input_size, full_res of ``model_from_checkpoint`` (None: the
    checkpoint's).
    """
    checkpoint = read_checkpoint(path, trust=trust)
    names = checkpoint_categories(checkpoint, path, categories, given_by, required)
    model = model_from_checkpoint(checkpoint, path, len(names), **settings)
    return model, names, checkpoint
