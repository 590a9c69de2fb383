"""Seeds and random-number-generator states: a run's randomness set from --seed, and saved in
(and restored from) mid-epoch checkpoints."""
import random

import numpy as np
import torch


def set_seed(seed):
    """Seed python, numpy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device):
    """The python, numpy and torch (CPU, and `device` when it is a GPU) RNG states, as plain
    Python values and tensors (a checkpoint holding them loads with weights_only=True)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {'python': random.getstate(),
             'numpy': (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached_gaussian)),
             'torch': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, device):
    """Undo rng_state: the RNGs continue as they were when it was taken."""
    random.setstate(state['python'])
    name, keys, pos, has_gauss, cached_gaussian = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos,
                         has_gauss, cached_gaussian))
    torch.set_rng_state(state['torch'])
    if device.type == 'cuda' and state.get('cuda') is not None:
        torch.cuda.set_rng_state(state['cuda'], device)
