"""Checkpoint I/O, the one place for it: atomic saving, tolerant reading, strict loading.

A checkpoint on disk is a dict with at least ``epoch``, ``arch``, ``state_dict`` and
``best_prec1`` (the release's layout). Parameter names may carry the ``module.`` prefix
that DataParallel/DistributedDataParallel add; every loader accepts both, and the files this
code writes carry it (``save_checkpoint``), as the release's do, so the release's test.py
(which loads into a DataParallel-wrapped model) reads them unchanged. Loading is
strict: missing keys, unexpected keys and shape mismatches are reported together in one
line (``CheckpointError``), never as a raw traceback and never as a silent partial load.

Besides the release's keys, a checkpoint main.py writes describes itself (``model_description``,
format ``FORMAT_VERSION``): class names, dataset, temporal type, arch, segments, input and scale
size, mean/std, channel order, flip map, the training flags (``args``) and the code version, so
predict.py, CAM.py, the Recognizer, torch.hub and tools/export.py need only the file.

Every reader gets the same dict from ``read_checkpoint``: the ``module.`` prefixes stripped
(repeated ones too: a DataParallel of a DataParallel) and the training flags ``args`` as a
plain dict whether the file stored a dict or an ``argparse.Namespace`` (TSM-era files): see
``checkpoint_args``. ImageNet weights and the other weight files a model starts from are read
by ``backbone_state_dict``; building the model and loading them is ops/models.py's job.

The model description records the hyper-parameters of the temporal modules (``{class name:
{attribute: value}}``, from the classes that declare ``hyperparameters``), so a checkpoint
evaluated or resumed under other values (e.g. MAM.alpha changed in the code) says so
(``hyperparameter_differences``); ``code_version`` is compared only for a one-line note.

Reading never runs code from a file: it unpickles with ``weights_only=True`` and allows only
the globals of SAFE_GLOBALS beside tensors and plain Python values. A file needing anything
else (e.g. a payload calling ``os.system``) is refused in one line naming the global and the
``--trust_checkpoint`` flag, which unpickles files the user trusts in full (logged).
"""
import argparse
import functools
import logging
import math
import os
import pickle
import re
import subprocess

import numpy as np
import torch

from ops.errors import UserError
from ops.files import atomic_write

WRAPPER_PREFIXES = ('module.',)
# the first bytes of what torch.save writes: a zip archive, or a pickle (the legacy format)
TORCH_FILE_MAGIC = (b'PK\x03\x04', b'\x80')
# the prefix of the state_dict keys this code writes: DataParallel's, as in the release's files
SAVED_PREFIX = 'module.'
# 1: type/arch/num_segments/input_size only (this project's earlier files); 2: model_description
FORMAT_VERSION = 2
# the code version recorded when the code is not a git checkout
CODE_VERSION = '1.0'
# what the model's input channels hold: frames are decoded as BGR (OpenCV) and swapped to RGB
CHANNEL_ORDER = 'RGB'
TRUST_FLAG = '--trust_checkpoint'
_NUMPY_SCALAR = (getattr(np, '_core', None) or np.core).multiarray.scalar  # numpy 2.x or 1.x
# What checkpoints of the release, of TSM-era code and of this project legitimately hold beyond
# tensors and plain Python values: numpy scalars (e.g. a best_prec1 computed with numpy, pickled
# by numpy 1.x as numpy.core.* and by numpy 2.x as numpy._core.*) with their dtypes, and
# argparse.Namespace (run arguments). The release's own files (floats only) need none of them.
SAFE_GLOBALS = [
    argparse.Namespace, np.dtype,
    (_NUMPY_SCALAR, 'numpy.core.multiarray.scalar'),
    (_NUMPY_SCALAR, 'numpy._core.multiarray.scalar'),
] + [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64,
                                  np.bool_)]

logger = logging.getLogger('masnet.model')


class CheckpointError(UserError):
    """A checkpoint file that cannot be read or does not fit the model."""


def save_checkpoint(state, path):
    """Write `state` to `path` atomically (a crash mid-write never leaves a truncated file),
    its ``state_dict`` keys prefixed with ``module.`` as in the release's files."""
    state = dict(state, state_dict=with_wrapper_prefix(state['state_dict']))
    with atomic_write(path) as f:
        torch.save(state, f)


def _refused_global(exc):
    """The global a weights-only unpickling refused (e.g. 'posix.system'), from its message."""
    found = re.search(r'GLOBAL (\S+)', str(exc))
    if found:  # builtins are named bare ('exec')
        return found.group(1) if '.' in found.group(1) else 'builtins.' + found.group(1)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _load_weights_only(path, map_location, trust):
    """torch.load of `path` with only SAFE_GLOBALS allowed; with `trust`, a file needing more is
    unpickled in full (its code runs) after a warning."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(exc)
        if not trust:
            raise CheckpointError(
                f"checkpoint '{path}' needs '{refused}' to unpickle, which could run code from "
                f"the file: refused; pass {TRUST_FLAG} only for files you trust") from None
    logger.warning(f"{TRUST_FLAG}: unpickling '{path}' in full (it needs '{refused}'): code in "
                   f"the file runs")
    return torch.load(path, map_location=map_location, weights_only=False)


def _not_a_checkpoint(path):
    """Why the file at `path` cannot be a torch.save file (empty, other first bytes), or None."""
    with open(path, 'rb') as f:
        head = f.read(4)
    if not head:
        return 'is not a checkpoint: empty file'
    if not head.startswith(TORCH_FILE_MAGIC):
        return f'is not a PyTorch checkpoint (it starts with {head!r})'
    return None


def read_checkpoint(path, map_location='cpu', trust=False):
    """Read a checkpoint file into a dict that always has a ``state_dict`` entry.

    Accepts the release layout (dict with ``state_dict``), a bare state dict, and
    torchvision-style weight files; the result is normalised as every reader expects (state
    dict without wrapper prefixes, ``args`` a dict: ``normalise_checkpoint``). Raises
    CheckpointError for a missing, empty, truncated or non-PyTorch file, and for one needing
    globals beyond SAFE_GLOBALS unless `trust` (``--trust_checkpoint``).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    problem = _not_a_checkpoint(path)
    if problem:
        raise CheckpointError(f"checkpoint '{path}' {problem}")
    try:
        data = _load_weights_only(path, map_location, trust)
    except CheckpointError:
        raise
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
    return normalise_checkpoint(data)


def normalise_checkpoint(checkpoint):
    """`checkpoint` as every reader expects it: state-dict keys without wrapper prefixes and
    ``args`` a plain dict (``checkpoint_args``); returns the same dict."""
    checkpoint['state_dict'] = strip_wrapper_prefix(checkpoint['state_dict'])
    if 'args' in checkpoint:
        checkpoint['args'] = checkpoint_args(checkpoint)
    return checkpoint


def checkpoint_args(checkpoint):
    """The training flags a checkpoint records, as a dict: its ``args`` entry whether a dict
    (this project's files) or an ``argparse.Namespace`` (TSM-era files); {} when it has none."""
    recorded = checkpoint.get('args')
    if isinstance(recorded, argparse.Namespace):
        return dict(vars(recorded))
    return dict(recorded) if isinstance(recorded, dict) else {}


def non_finite_entries(state):
    """Names of the floating-point tensors (and floats) holding NaN or inf in a (nested) state
    dict, e.g. a model's, an optimizer's or a GradScaler's."""
    bad = []

    def visit(value, name):
        if torch.is_tensor(value):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(name)
        elif isinstance(value, float):
            if not math.isfinite(value):
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


@functools.lru_cache(maxsize=None)
def code_version():
    """``git describe --always --dirty`` of this code base, else ``CODE_VERSION``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        described = subprocess.run(['git', 'describe', '--always', '--dirty', '--tags'], cwd=root,
                                   capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return CODE_VERSION
    version = described.stdout.strip()
    return f'git {version}' if described.returncode == 0 and version else CODE_VERSION


def model_description(model, categories, dataset=None, flip=None, mirror_map=None):
    """What using `model` (a TemporalModel) needs besides its weights: the dict a checkpoint
    records beside them and an export carries as metadata.

    categories: the class names, one per class; dataset: the dataset's name (None: unknown);
    flip: whether training flipped clips horizontally (None: unknown); mirror_map: ``{label:
    label of the mirrored class}`` those flips used.
    """
    if len(categories) != model.num_class:
        raise CheckpointError(f'{len(categories)} class names for a model of {model.num_class} '
                              f'classes')
    return {'format_version': FORMAT_VERSION, 'code_version': code_version(),
            'dataset': dataset, 'categories': [str(name) for name in categories],
            'num_class': model.num_class, 'type': model.temporal_type, 'arch': model.arch,
            'num_segments': model.num_segments, 'input_size': model.input_size,
            'scale_size': model.scale_size, 'input_mean': [float(m) for m in model.input_mean],
            'input_std': [float(s) for s in model.input_std], 'channel_order': CHANNEL_ORDER,
            'flip': flip, 'mirror_map': {int(k): int(v) for k, v in (mirror_map or {}).items()},
            'hyperparameters': module_hyperparameters(model)}


def _plain(value):
    """A hyper-parameter value as the checkpoint stores it: plain Python (what a weights-only
    load and JSON read back), tuples as lists, anything else as its repr."""
    if torch.is_tensor(value) or isinstance(value, np.generic):
        value = value.tolist()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def _declared_hyperparameters(model):
    """[(module path, class name, {attr: value})] of the modules of `model` whose class
    declares ``hyperparameters`` (names of instance attributes that change its function)."""
    found = []
    for path, module in model.named_modules():
        names = getattr(type(module), 'hyperparameters', None)
        if isinstance(names, (tuple, list)) and names:
            found.append((path, type(module).__name__,
                          {name: _plain(getattr(module, name)) for name in names}))
    return found


def module_hyperparameters(model):
    """``{class name: {attr: value}}`` of the temporal modules of `model` (e.g. ``{'MAM':
    {'alpha': 0.5}}``), from the classes that declare a ``hyperparameters`` tuple; a class whose
    instances disagree is recorded per instance, keyed by module path instead."""
    by_class = {}
    for path, name, values in _declared_hyperparameters(model):
        by_class.setdefault(name, []).append((path, values))
    record = {}
    for name, instances in by_class.items():
        if all(values == instances[0][1] for _, values in instances):
            record[name] = instances[0][1]
        else:
            record.update({path: values for path, values in instances})
    return record


def hyperparameter_differences(checkpoint, model):
    """Lines such as ``MAM.alpha 0.5 in the checkpoint, 0.8 in the code`` for each module
    hyper-parameter the checkpoint records with another value than `model` has, and ``MAM.
    direction not recorded in the checkpoint, previous in the code`` for one a module the
    checkpoint records does not (declared after it was written: its value then is unknown).
    Checkpoints that record none (the release's, earlier ones) give []."""
    recorded = checkpoint.get('hyperparameters')
    if not isinstance(recorded, dict):
        return []
    lines = []
    for path, name, values in _declared_hyperparameters(model):
        label, trained = (path, recorded[path]) if path in recorded else (name, recorded.get(name))
        for attr, value in values.items():
            if not isinstance(trained, dict):
                continue
            if attr not in trained:
                line = f'{label}.{attr} not recorded in the checkpoint, {value} in the code'
            elif _plain(trained[attr]) != value:
                line = f'{label}.{attr} {trained[attr]} in the checkpoint, {value} in the code'
            else:
                continue
            if line not in lines:
                lines.append(line)
    return lines


def code_version_note(checkpoint, path):
    """A line saying that `checkpoint` was written by another version of the code (None when
    it records none or the same). Only a note: the recorded hyper-parameters are what is
    checked."""
    recorded = checkpoint.get('code_version')
    if recorded is None or recorded == code_version():
        return None
    return f"checkpoint '{path}' was written by code {recorded}, this is {code_version()}"


def training_checkpoint(epoch, model, optimizer, settings, prec1=None, best_prec1=0.0,
                        scaler_state=None, description=None, **extra):
    """The dict main.py saves: the release's keys (epoch, arch, state_dict, prec1, best_prec1),
    the model settings of SETTING_KEYS and the training flags as ``args`` (both from `settings`,
    i.e. ``vars(args)``), the `description` (``model_description``), what resuming needs
    (optimizer and scaler state) and `extra` entries."""
    state = {key: settings[key] for key in SETTING_KEYS}
    state.update(description or {})
    state.update(epoch=epoch, state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                 scaler=scaler_state, prec1=prec1, best_prec1=best_prec1, args=dict(settings),
                 **extra)
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


def checkpoint_categories(checkpoint, path, given=None, given_by='the given class names',
                          required='--categories FILE or --dataset NAME'):
    """The class names to use with a checkpoint: its own, checked against `given` when given.

    given: names from the user (a category file, a dataset), or None. given_by: how the user
    gave them, for the messages (e.g. "--dataset somethingv2"). required: what to pass when the
    checkpoint records no names (the release's files, this project's before format 2).
    Raises CheckpointError when the two disagree, or when neither exists.
    """
    recorded = checkpoint.get('categories')
    if given is None:
        if recorded is None:
            raise CheckpointError(f"checkpoint '{path}' records no class names (a release "
                                  f"checkpoint or an older one of this project): pass {required}")
        return list(recorded)
    given = [str(name) for name in given]
    if recorded is None or given == list(recorded):
        return given
    trained_on = f" (dataset {checkpoint['dataset']})" if checkpoint.get('dataset') else ''
    if len(given) != len(recorded):
        raise CheckpointError(f"{given_by} names {len(given)} classes, checkpoint '{path}' was "
                              f"trained on {len(recorded)}{trained_on}")
    index = next(i for i, (a, b) in enumerate(zip(given, recorded)) if a != b)
    raise CheckpointError(f"{given_by} names class {index} '{given[index]}', checkpoint '{path}' "
                          f"'{recorded[index]}'{trained_on}: omit the flag to use the "
                          f"checkpoint's names")


def check_finite(checkpoint, path, keys=('state_dict',), source=None):
    """Refuse a checkpoint holding NaN / inf in its weights and buffers (or in the other `keys`,
    e.g. 'optimizer' and 'scaler' for --resume): it comes from a diverged run or is damaged.
    source: how the file is named in the error (default: checkpoint 'PATH')."""
    bad = non_finite_entries({key: checkpoint[key] for key in keys
                              if checkpoint.get(key) is not None})
    if bad:
        raise CheckpointError(f"{source or f'checkpoint {path!r}'} holds {len(bad)} non-finite "
                              f"value(s) [{_summarise(bad)}]: it comes from a diverged run or is "
                              f"damaged; use an earlier checkpoint")


def strip_wrapper_prefix(state_dict):
    """Drop the ``module.`` prefixes DataParallel/DDP add to every parameter name, repeated
    ones too (``module.module.``: a wrapped model wrapped again)."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key[len(next(p for p in WRAPPER_PREFIXES if key.startswith(p))):]
        stripped[key] = value
    return stripped


def with_wrapper_prefix(state_dict):
    """`state_dict` with every key prefixed ``module.`` once (the layout this code writes)."""
    return {key if key.startswith(SAVED_PREFIX) else SAVED_PREFIX + key: value
            for key, value in state_dict.items()}


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
                  for k in wanted
                  if k in offered and tuple(offered[k].shape) != tuple(own[k].shape)]
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


def load_model_weights(model, path, skip_prefixes=(), map_location='cpu', trust=False):
    """Read `path` (see read_checkpoint for `trust`), refuse non-finite weights and load them
    into `model` strictly; returns the checkpoint dict."""
    checkpoint = read_checkpoint(path, map_location=map_location, trust=trust)
    check_finite(checkpoint, path)
    load_state_dict_checked(model, checkpoint['state_dict'], source=f"checkpoint '{path}'",
                            skip_prefixes=skip_prefixes)
    return checkpoint


def unwrap_model(model):
    """The bare model inside DataParallel / DistributedDataParallel wrappers."""
    while hasattr(model, 'module') and isinstance(model, (torch.nn.DataParallel,
                                                          torch.nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def backbone_state_dict(path, trust=False):
    """The backbone weights of a weight file a model starts from (``--pretrain``: torchvision's
    ImageNet file, another torchvision-layout file, or a TemporalModel checkpoint): its state
    dict without classifier (``fc.``, ``new_fc.``) and without the ``base_model.`` prefix,
    refused when not finite. `trust` as in read_checkpoint."""
    checkpoint = read_checkpoint(path, trust=trust)
    check_finite(checkpoint, path, source=f"--pretrain weights '{path}'")
    return {k[len('base_model.'):] if k.startswith('base_model.') else k: v
            for k, v in checkpoint['state_dict'].items()
            if not k.startswith(('new_fc.', 'fc.', 'base_model.fc.'))}
