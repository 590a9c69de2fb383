"""TSN-style video classifier around a (temporal) ResNet backbone, and its builders.

``TemporalModel`` runs the backbone on every sampled frame, applies dropout and a new
classifier (``new_fc``) per frame and averages the T frame scores (the segmental consensus
of TSN). Its ``state_dict`` names (``base_model.*``, ``new_fc.*``) are those of the MAS-Net
release. The module computes and reads no file; as with torchvision's ``resnet50(weights=...)``,
the builders create it and load weights: ``build_model`` (random, ImageNet or a weight file
for the backbone), ``model_from_checkpoint`` (the model a checkpoint was trained as, with its
weights) and ``load_classifier`` (that, plus the checkpoint's class names). Files are read and
written by ops/checkpoint.py; the temporal types come from the registry in ops/temporal.py.
"""
import logging
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from archs import ARCHS
from ops.checkpoint import (
    CheckpointError,
    backbone_state_dict,
    check_finite,
    check_trained_settings,
    checkpoint_categories,
    code_version_note,
    hyperparameter_differences,
    load_state_dict_checked,
    normalise_checkpoint,
    read_checkpoint,
    trained_settings,
)
from ops.download import imagenet_weights
from ops.optim import optim_policies
from ops.temporal import build_backbone, temporal_module
from ops.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

logger = logging.getLogger('masnet.model')

# segments of a checkpoint that records none (the release's): the release's test.py default
RELEASE_TEST_SEGMENTS = 16


class TemporalModel(nn.Module):
    """Video classifier: backbone per frame -> dropout -> new_fc -> average over T.

    Args:
        num_class: number of action classes.
        num_segments: frames sampled per clip (T).
        temporal_type: the registered temporal type (``--type``, a checkpoint's 'type';
            ops/temporal.py: 'MASNet' (default), 'TSM', 'TSN', ...). ``base_model=`` is the
            release's keyword for it and is still accepted; ``self.base_model`` is the backbone.
        backbone: ResNet arch (``archs.ARCHS``).
        dropout: dropout before new_fc (the backbone's fc becomes this Dropout).
        consensus_type: 'avg' (the only consensus the release uses).
        partial_bn: TSN/TSM's partial BN (off in the release and by default): while
            training, every BatchNorm after the first whose weights came from a weight file
            (``initialised_norms``: set by ``build_model``'s --pretrain, or by
            ``init_norms_from`` after a --tune_from load) keeps its statistics and affine
            parameters frozen. BatchNorms that no weight file set (MAM ``bn1``, MSM ``bn_fc1``
            under ImageNet init) always train.
        input_size: side of the square network input (224 in the paper).
        full_res: evaluate on larger crops (input_size * 256/224) as in 3-crop testing.

    The weights are random (``build_model`` loads ImageNet or file weights into the backbone).
    Input ``(N, T*3, H, W)``, output ``(N, num_class)``.

    MAS-Net's blocks compute their modules in a form chosen by ``ops.MASNet.set_form(form,
    model)``, ``$MASNET_FORM`` or ``--mas_form``: 'fast' (default), 'compiled', or
    'readable', the modules' forwards (the paper's math; the fast forms are checked against
    them: ops/MASNet.py, docs/fused_block.md).
    """

    def __init__(self, num_class: int, num_segments: int, temporal_type: Optional[str] = None,
                 backbone: str = 'resnet50', dropout: float = 0.5, consensus_type: str = 'avg',
                 partial_bn: bool = False, input_size: int = 224, full_res: bool = False,
                 base_model: Optional[str] = None):
        super().__init__()
        if temporal_type and base_model and temporal_type != base_model:
            raise ValueError(f"temporal_type '{temporal_type}' and base_model '{base_model}' "
                             f"name the same thing: give one")
        temporal_type = temporal_type or base_model or 'MASNet'
        temporal_module(temporal_type)  # an unknown type is a ValueError naming the choices
        if backbone not in ARCHS:
            raise ValueError(f"unknown arch '{backbone}' (choose from {', '.join(ARCHS)})")
        if consensus_type != 'avg':
            raise ValueError(f"unknown consensus '{consensus_type}' (only 'avg' is supported)")
        self.num_class = num_class
        self.num_segments = num_segments
        self.temporal_type = temporal_type
        self.arch = backbone
        self.dropout = dropout
        self.input_size = input_size
        self.full_res = full_res
        self._enable_pbn = partial_bn
        self.initialised_norms = set()  # names of BatchNorms in base_model set by weight files
        self.num_pretrained_tensors = 0  # backbone tensors build_model loaded from --pretrain

        self.base_model = build_backbone(backbone, temporal_type, num_segments)
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


def build_model(num_class: int, num_segments: int, temporal_type: Optional[str] = None,
                backbone: str = 'resnet50', pretrain: Optional[str] = 'imagenet', *,
                offline: Optional[bool] = None, trust_checkpoint: bool = False,
                **settings) -> TemporalModel:
    """A new TemporalModel whose backbone starts from `pretrain`, as main.py trains it.

    pretrain: 'imagenet' (torchvision's weights from the torch hub cache, fetched and verified
        there when missing: ops.download.imagenet_weights; `offline` True, or None with
        MASNET_OFFLINE set, never downloads), 'none' / '' / None (random), or the path of a
        weight file (torchvision layout or a TemporalModel checkpoint, whose classifier is
        ignored); the BatchNorms it sets are the model's ``initialised_norms`` (partial BN).
    trust_checkpoint: unpickle a `pretrain` file in full (``--trust_checkpoint``).
    settings: TemporalModel's other arguments (dropout, partial_bn, input_size, full_res,
        consensus_type, base_model).
    """
    model = TemporalModel(num_class, num_segments, temporal_type, backbone, **settings)
    if pretrain not in (None, '', 'none'):
        path = imagenet_weights(backbone, offline) if pretrain == 'imagenet' else pretrain
        load_backbone_weights(model, path, trust_checkpoint)
    return model


def load_backbone_weights(model: TemporalModel, path: str, trust: bool = False) -> List[str]:
    """Initialise ``model.base_model`` non-strictly from the weight file at `path` (shapes must
    fit; names it lacks keep their values); returns the names of the tensors loaded."""
    loaded = load_state_dict_checked(model.base_model, backbone_state_dict(path, trust),
                                     source=f"pretrained weights '{path}'", allow_missing=True)
    if not loaded:
        raise CheckpointError(f"pretrained weights '{path}' share no parameter name with "
                              f"{model.arch}; is it a ResNet weight file?")
    logger.info('loaded %d/%d backbone tensors from %s', len(loaded),
                len(model.base_model.state_dict()), path)
    model.num_pretrained_tensors = len(loaded)
    model.init_norms_from(loaded)
    return loaded


def hyperparameter_line(checkpoint: Dict, model: nn.Module, path: str) -> Optional[str]:
    """One line naming the module hyper-parameters `checkpoint` records with other values than
    `model` has (e.g. MAM.alpha changed in the code since training), or None."""
    differences = hyperparameter_differences(checkpoint, model)
    if not differences:
        return None
    return (f"checkpoint '{path}' was trained with other module hyper-parameters "
            f"({'; '.join(differences)})")


def model_from_checkpoint(checkpoint: Union[str, Dict], path: Optional[str] = None,
                          num_class: Optional[int] = None, num_segments: Optional[int] = None,
                          temporal_type: Optional[str] = None,
                          arch: Optional[str] = None, input_size: Optional[int] = None,
                          full_res: bool = False,
                          default_segments: int = RELEASE_TEST_SEGMENTS,
                          trust: bool = False) -> TemporalModel:
    """The TemporalModel a checkpoint was trained as, with its weights.

    checkpoint: a checkpoint file (read with `trust` as in read_checkpoint) or its dict;
    path: how the file is named in messages (default: the file). The model's settings come from
    the flags given here, then from the checkpoint's metadata ('type', 'arch', 'num_segments',
    'input_size'; the release stores only 'arch'), then from the defaults (MASNet, resnet50,
    `default_segments` = the release's test.py default 16, 224 px); a segment count taken from
    the defaults is logged, and so are module hyper-parameters recorded with other values than
    the code's (a warning: the model computes with the code's). num_class: the classes the
    caller expects (None: the checkpoint's).
    Raises CheckpointError when the class count, segment count, type or arch does not fit.
    """
    if isinstance(checkpoint, str):
        path = path or checkpoint
        checkpoint = read_checkpoint(checkpoint, trust=trust)
    checkpoint = normalise_checkpoint(dict(checkpoint))
    fc_weight = checkpoint['state_dict'].get('new_fc.weight')
    if fc_weight is None:
        raise CheckpointError(f"checkpoint '{path}' has no new_fc.weight: not a TemporalModel")
    num_class = fc_weight.shape[0] if num_class is None else num_class
    if fc_weight.shape[0] != num_class:
        raise CheckpointError(f"checkpoint '{path}' has {fc_weight.shape[0]} classes, "
                              f"the dataset has {num_class}")
    check_finite(checkpoint, path)
    trained = trained_settings(checkpoint)
    check_trained_settings(checkpoint, path, num_segments=num_segments, type=temporal_type,
                           arch=arch)
    arch = arch or trained['arch'] or 'resnet50'
    if arch not in ARCHS:
        raise CheckpointError(f"checkpoint '{path}' names arch '{arch}', not one of "
                              f"{', '.join(ARCHS)}; pass --arch")
    if not (num_segments or trained['num_segments']):
        logger.info(f"'{path}' records no segment count: using {default_segments} "
                    f"(pass --test_segments to change it)")
    model = TemporalModel(num_class, num_segments or trained['num_segments'] or default_segments,
                          temporal_type or trained['type'] or 'MASNet', arch,
                          input_size=input_size or trained['input_size'] or 224,
                          full_res=full_res)
    load_state_dict_checked(model, checkpoint['state_dict'], source=f"checkpoint '{path}'")
    report_differences(checkpoint, model, path)
    return model


def report_differences(checkpoint: Dict, model: nn.Module, path: str) -> None:
    """Log, in one line each, module hyper-parameters that differ from the checkpoint's (a
    warning) and another code version (a note)."""
    line = hyperparameter_line(checkpoint, model, path)
    if line:
        logger.warning(f"{line}: it runs with the code's values")
    note = code_version_note(checkpoint, path)
    if note:
        logger.info(note)


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
