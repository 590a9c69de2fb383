"""Checkpoint I/O, the one place for it: atomic saving, tolerant reading, strict loading.

A checkpoint on disk is a dict with at least ``epoch``, ``arch``, ``state_dict`` and
``best_prec1`` (the release's layout). Parameter names may carry the ``module.`` prefix
that DataParallel/DistributedDataParallel add; every loader accepts both. Loading is
strict: missing keys, unexpected keys and shape mismatches are reported together in one
line (``CheckpointError``), never as a raw traceback and never as a silent partial load.
"""
import logging
import os
import pickle

import torch

from ops.download import DownloadError, imagenet_weights
from ops.errors import UserError
from ops.utils import atomic_write

WRAPPER_PREFIXES = ('module.',)

logger = logging.getLogger('masnet.model')


class CheckpointError(UserError):
    """A checkpoint file that cannot be read or does not fit the model."""


def save_checkpoint(state, path):
    """Write `state` to `path` atomically: a crash mid-write never leaves a truncated file."""
    with atomic_write(path) as f:
        torch.save(state, f)


def read_checkpoint(path, map_location='cpu'):
    """Read a checkpoint file into a dict that always has a ``state_dict`` entry.

    Accepts the release layout (dict with ``state_dict``), a bare state dict, and
    torchvision-style weight files. Raises CheckpointError for a missing, truncated or
    non-PyTorch file.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            # Older checkpoints may pickle numpy scalars or argparse objects; they are the
            # user's own (or the authors' released) files, so fall back to full unpickling.
            data = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, wrong format, ...
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read (truncated or not a PyTorch file): "
            f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(data).__name__}, not a dict")
    if 'state_dict' not in data:
        if not all(torch.is_tensor(v) for v in data.values()):
            raise CheckpointError(f"checkpoint '{path}' has no 'state_dict' entry "
                                  f"(keys: {', '.join(list(data)[:8])})")
        data = {'state_dict': data}
    data['state_dict'] = strip_wrapper_prefix(data['state_dict'])
    return data


def non_finite_entries(state):
    """Names of the floating-point tensors holding NaN or inf in a (nested) state dict, e.g. a
    model's or an optimizer's."""
    bad = []

    def visit(value, name):
        if torch.is_tensor(value):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(name)
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f'{name}.{key}' if name else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f'{name}.{i}')

    visit(state, '')
    return bad


# the model settings a checkpoint of this code base records beside the release's 'arch'
SETTING_KEYS = ('type', 'arch', 'num_segments', 'input_size')


def training_checkpoint(epoch, model, optimizer, settings, prec1=None, best_prec1=0.0,
                        scaler_state=None, **extra):
    """The dict main.py saves: the release's keys (epoch, arch, state_dict, best_prec1), the
    model settings of SETTING_KEYS (from `settings`), what resuming needs (optimizer and
    scaler state, the epoch's top-1 as prec1) and `extra` entries (e.g. args)."""
    state = {key: settings[key] for key in SETTING_KEYS}
    state.update(epoch=epoch, state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                 scaler=scaler_state, prec1=prec1, best_prec1=best_prec1, **extra)
    return state


def trained_settings(checkpoint):
    """``{type, arch, num_segments, input_size}`` a checkpoint records (None where it does not:
    the release's record only 'arch')."""
    return {key: checkpoint.get(key) for key in SETTING_KEYS}


def check_trained_settings(checkpoint, path, **settings):
    """Refuse a checkpoint whose recorded settings (e.g. num_segments=8, arch='resnet50') differ
    from the given ones; settings the checkpoint does not record, or given as None, pass."""
    recorded = trained_settings(checkpoint)
    for key, wanted in settings.items():
        trained = recorded[key]
        if wanted and trained and wanted != trained:
            if key == 'num_segments':
                raise CheckpointError(f"checkpoint '{path}' was trained with {trained} segments, "
                                      f"not {wanted}")
            raise CheckpointError(f"checkpoint '{path}' was trained with {key} {trained}, "
                                  f"not {wanted}")


def check_finite(checkpoint, path):
    """Refuse a checkpoint holding NaN / inf weights (from a diverged run)."""
    bad = non_finite_entries(checkpoint['state_dict'])
    if bad:
        raise CheckpointError(f"checkpoint '{path}' holds {len(bad)} non-finite tensor(s) "
                              f"[{_summarise(bad)}]: it comes from a diverged run; resume from "
                              f"an earlier checkpoint or start afresh with another --store_name")


def strip_wrapper_prefix(state_dict):
    """Drop the ``module.`` prefix DataParallel/DDP add to every parameter name."""
    stripped = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        stripped[key] = value
    return stripped


def _summarise(names, limit=4):
    shown = ', '.join(names[:limit])
    return shown + (f', ... (+{len(names) - limit} more)' if len(names) > limit else '')


def load_state_dict_checked(model, state_dict, source='checkpoint', skip_prefixes=(),
                            allow_missing=False):
    """Copy `state_dict` into `model`, refusing anything that does not fit.

    skip_prefixes: names starting with these are neither loaded nor required (e.g. ``new_fc.``
        when fine-tuning on a dataset with another number of classes).
    allow_missing: model parameters absent from `state_dict` keep their values, and
        unexpected names are ignored (used for ImageNet initialisation of a larger model);
        shape mismatches are still errors.
    Returns the list of names that were loaded.
    Raises CheckpointError naming the source and the offending keys.
    """
    state_dict = strip_wrapper_prefix(state_dict)
    own = model.state_dict()

    def skipped(name):
        return any(name.startswith(p) for p in skip_prefixes)

    wanted = [k for k in own if not skipped(k)]
    offered = {k: v for k, v in state_dict.items() if not skipped(k)}
    # BatchNorm's num_batches_tracked counter is absent from checkpoints of old PyTorch
    # versions and unused in training with momentum; it never makes a checkpoint unfit.
    missing = [k for k in wanted if k not in offered and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in offered if k not in own]
    mismatched = [f'{k}: {tuple(offered[k].shape)} in file vs {tuple(own[k].shape)} in model'
                  for k in wanted if k in offered and tuple(offered[k].shape) != tuple(own[k].shape)]
    problems = []
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatch(es) [{_summarise(mismatched)}]')
    if not allow_missing:
        if missing:
            problems.append(f'{len(missing)} missing key(s) [{_summarise(missing)}]')
        if unexpected:
            problems.append(f'{len(unexpected)} unexpected key(s) [{_summarise(unexpected)}]')
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + '; '.join(problems))
    loaded = [k for k in wanted if k in offered and k in own]
    model.load_state_dict({k: offered[k] for k in loaded}, strict=False)
    return loaded


def load_model_weights(model, path, skip_prefixes=(), map_location='cpu'):
    """Read `path` and load its weights into `model` strictly; returns the checkpoint dict."""
    checkpoint = read_checkpoint(path, map_location=map_location)
    load_state_dict_checked(model, checkpoint['state_dict'], source=f"checkpoint '{path}'",
                            skip_prefixes=skip_prefixes)
    return checkpoint


def unwrap_model(model):
    """The bare model inside DataParallel / DistributedDataParallel wrappers."""
    while hasattr(model, 'module') and isinstance(model, (torch.nn.DataParallel,
                                                          torch.nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def load_pretrained_backbone(backbone, arch, pretrain, offline=None):
    """Initialise `backbone` (a ResNet of `arch`) non-strictly from pretrained weights.

    pretrain: 'imagenet' (torchvision's file in the torch hub cache, downloaded and verified
    there when missing: ops.download.imagenet_weights; `offline` True, or None with
    MASNET_OFFLINE set, refuses to download), 'none' / '' / None, or the path of a weight file
    (torchvision layout or a TemporalModel checkpoint, whose new_fc is ignored).
    Returns the names of the tensors loaded.
    """
    if pretrain in (None, '', 'none'):
        return []
    if pretrain == 'imagenet':
        try:
            path = imagenet_weights(arch, offline)
        except DownloadError as exc:
            raise CheckpointError(str(exc)) from None
    else:
        path = pretrain
    state_dict = read_checkpoint(path)['state_dict']
    state_dict = {k[len('base_model.'):] if k.startswith('base_model.') else k: v
                  for k, v in state_dict.items()
                  if not k.startswith(('new_fc.', 'fc.', 'base_model.fc.'))}
    loaded = load_state_dict_checked(backbone, state_dict, source=f"pretrained weights '{path}'",
                                     allow_missing=True)
    if not loaded:
        raise CheckpointError(f"pretrained weights '{path}' share no parameter name with "
                              f"{arch}; is it a ResNet weight file?")
    logger.info('loaded %d/%d backbone tensors from %s', len(loaded),
                len(backbone.state_dict()), path)
    return loaded
