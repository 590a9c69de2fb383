"""TSN-style video classifier around a (temporal) ResNet backbone.

``TemporalModel`` runs the backbone on every sampled frame, applies dropout and a new
classifier (``new_fc``) per frame and averages the T frame scores (the segmental consensus
of TSN). Its ``state_dict`` names (``base_model.*``, ``new_fc.*``) are those of the MAS-Net
release.
"""
import logging
import os

import torch
import torch.nn as nn

from archs import ARCHS, IMAGENET_WEIGHT_FILES, TEMPORAL_TYPES, build_backbone
from ops.checkpoint import (CheckpointError, check_trained_settings, load_state_dict_checked,
                            read_checkpoint)

logger = logging.getLogger('masnet.model')

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGENET_URL = 'https://download.pytorch.org/models/{}'


def imagenet_weight_path(arch):
    """Where torchvision keeps the IMAGENET1K_V1 weights of `arch` (the torch hub cache)."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', IMAGENET_WEIGHT_FILES[arch])


class TemporalModel(nn.Module):
    """Video classifier: backbone per frame -> dropout -> new_fc -> average over T.

    Args:
        num_class: number of action classes.
        num_segments: frames sampled per clip (T).
        base_model: temporal module type, one of ``TEMPORAL_TYPES`` ('MASNet', 'TSM', 'TSN').
        backbone: ResNet arch (``archs.ARCHS``).
        dropout: dropout before new_fc (the backbone's fc becomes this Dropout).
        consensus_type: 'avg' (the only consensus the release uses).
        partial_bn: freeze every BatchNorm but the first while training (TSN).
        pretrain: 'imagenet' (torchvision weights from the local torch hub cache),
            'none', or the path of a weight file.
        input_size: side of the square network input (224 in the paper).
        full_res: evaluate on larger crops (input_size * 256/224) as in 3-crop testing.

    Input ``(N, T*3, H, W)``, output ``(N, num_class)``.
    """

    def __init__(self, num_class, num_segments, base_model='MASNet', backbone='resnet50',
                 dropout=0.5, consensus_type='avg', partial_bn=True, pretrain='imagenet',
                 input_size=224, full_res=False):
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
        self.base_model_name = base_model
        self.arch = backbone
        self.dropout = dropout
        self.input_size = input_size
        self.full_res = full_res
        self._enable_pbn = partial_bn

        self.base_model = build_backbone(backbone, base_model, num_segments)
        self.num_pretrained_tensors = self._load_pretrained(pretrain)
        feature_dim = self.base_model.fc.in_features
        self.base_model.fc = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.new_fc = nn.Linear(feature_dim, num_class)
        nn.init.normal_(self.new_fc.weight, 0, 0.001)
        nn.init.constant_(self.new_fc.bias, 0)

    def _load_pretrained(self, pretrain):
        """Initialise the backbone from ImageNet weights; returns the number of tensors loaded."""
        if pretrain in (None, '', 'none'):
            return 0
        if pretrain == 'imagenet':
            if self.arch not in IMAGENET_WEIGHT_FILES:
                raise CheckpointError(f"--pretrain imagenet: no torchvision weights exist for "
                                      f"'{self.arch}'; pass --pretrain none or a weight file")
            path = imagenet_weight_path(self.arch)
            if not os.path.isfile(path):
                url = IMAGENET_URL.format(IMAGENET_WEIGHT_FILES[self.arch])
                raise CheckpointError(
                    f"--pretrain imagenet: '{path}' not found (no download is attempted); "
                    f"fetch {url} to that path, or pass --pretrain none or --pretrain PATH")
        else:
            path = pretrain
        state_dict = read_checkpoint(path)['state_dict']
        state_dict = {k[len('base_model.'):] if k.startswith('base_model.') else k: v
                      for k, v in state_dict.items() if not k.startswith('new_fc.')}
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith('fc.')}
        loaded = load_state_dict_checked(self.base_model, state_dict,
                                         source=f"pretrained weights '{path}'", allow_missing=True)
        if not loaded:
            raise CheckpointError(f"pretrained weights '{path}' share no parameter name with "
                                  f"{self.arch}; is it a ResNet weight file?")
        logger.info('loaded %d/%d backbone tensors from %s', len(loaded),
                    len(self.base_model.state_dict()), path)
        return len(loaded)

    def forward(self, x):
        n = x.size(0)
        x = x.view((-1, 3) + x.shape[-2:])  # (N*T, 3, H, W)
        features = self.base_model(x)  # (N*T, D)
        scores = self.new_fc(features)  # (N*T, num_class)
        return scores.view(n, -1, self.num_class).mean(dim=1)  # (N, num_class)

    def train(self, mode=True):
        """Switch mode; with partial BN, every BatchNorm but the first stays frozen in eval."""
        super().train(mode)
        if self._enable_pbn and mode:
            norms = [m for m in self.base_model.modules()
                     if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))]
            for m in norms[1:]:
                m.eval()
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
        return self

    def partialBN(self, enable):
        self._enable_pbn = enable
        if not enable:
            for m in self.base_model.modules():
                if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                    m.weight.requires_grad_(True)
                    m.bias.requires_grad_(True)

    @property
    def crop_size(self):
        return self.scale_size if self.full_res else self.input_size

    @property
    def scale_size(self):
        return self.input_size * 256 // 224

    @property
    def input_mean(self):
        return list(IMAGENET_MEAN)

    @property
    def input_std(self):
        return list(IMAGENET_STD)

    def get_augmentation(self, flip=True, mirror_map=None):
        """The training transform: multi-scale crop, (mirror-aware) flip, normalisation."""
        from ops.transforms import build_transform
        return build_transform('train', self.crop_size, self.scale_size, self.input_mean,
                               self.input_std, flip=flip, mirror_map=mirror_map)

    def get_optim_policies(self):
        """Parameter groups with the release's lr / weight-decay multipliers.

        first conv weight (1, 1), first conv bias (2, 0), other conv/linear weights (1, 1),
        their biases (2, 0), BatchNorm 2d/3d affine parameters (1, 0). Every parameter is in
        exactly one group; a parameterised module of another type is an error.
        """
        groups = {name: [] for name in ('first_conv_weight', 'first_conv_bias', 'normal_weight',
                                        'normal_bias', 'bn')}
        first_conv_seen = False
        for name, module in self.named_modules():
            params = list(module.parameters(recurse=False))
            if not params:
                continue
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                is_first = isinstance(module, nn.Conv2d) and not first_conv_seen
                first_conv_seen = first_conv_seen or is_first
                prefix = 'first_conv' if is_first else 'normal'
                groups[prefix + '_weight'].append(module.weight)
                if module.bias is not None:
                    groups[prefix + '_bias'].append(module.bias)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                groups['bn'].extend(params)
            else:
                raise ValueError(f"get_optim_policies: no lr policy for module '{name}' of "
                                 f"type {type(module).__name__} with parameters")
        multipliers = {'first_conv_weight': (1, 1), 'first_conv_bias': (2, 0),
                       'normal_weight': (1, 1), 'normal_bias': (2, 0), 'bn': (1, 0)}
        return [{'params': groups[name], 'lr_mult': lr, 'decay_mult': decay, 'name': name}
                for name, (lr, decay) in multipliers.items()]


def model_from_checkpoint(checkpoint, path, num_class, num_segments=None, base_model=None,
                          arch=None, input_size=None, full_res=False):
    """Rebuild the TemporalModel a checkpoint was trained as, and load its weights.

    The model's settings come from the flags given here, then from the checkpoint's
    metadata ('type', 'arch', 'num_segments', 'input_size'; the release stores only
    'arch'), then from the paper's defaults (MASNet, resnet50, 8 segments, 224 px).
    Raises CheckpointError when the class count or segment count does not fit.
    """
    state_dict = checkpoint['state_dict']
    fc_weight = state_dict.get('new_fc.weight')
    if fc_weight is None:
        raise CheckpointError(f"checkpoint '{path}' has no new_fc.weight: not a TemporalModel")
    if fc_weight.shape[0] != num_class:
        raise CheckpointError(f"checkpoint '{path}' has {fc_weight.shape[0]} classes, "
                              f"the dataset has {num_class}")
    trained_segments = checkpoint.get('num_segments')
    check_trained_settings(checkpoint, path, num_segments=num_segments)
    arch = arch or checkpoint.get('arch') or 'resnet50'
    if arch not in ARCHS:
        raise CheckpointError(f"checkpoint '{path}' names arch '{arch}', not one of "
                              f"{', '.join(ARCHS)}; pass --arch")
    model = TemporalModel(num_class, num_segments or trained_segments or 8,
                          base_model or checkpoint.get('type') or 'MASNet', arch,
                          partial_bn=False, pretrain='none',
                          input_size=input_size or checkpoint.get('input_size') or 224,
                          full_res=full_res)
    load_state_dict_checked(model, state_dict, source=f"checkpoint '{path}'")
    return model
