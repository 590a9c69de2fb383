"""Shared fixtures: a tiny generated dataset and small models, so the suite runs on a CPU."""
import os
import socket

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(2)

TINY = dict(train_per_class=3, val_per_class=2, width=64, height=48, min_frames=6, max_frames=12)


@pytest.fixture(scope='session')
def tiny_data_root(tmp_path_factory):
    """A dataset_path holding a tiny synthetic dataset (8 classes, 24 train / 16 val videos)."""
    from ops.synthetic import ensure_synthetic
    root = tmp_path_factory.mktemp('datasets')
    ensure_synthetic(str(root / 'synthetic'), **TINY)
    return str(root)


def randomize_bn(model, seed=0):
    """Random BatchNorm statistics and affine parameters, so eval-mode checks see real values."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def free_port():
    """A TCP port nothing listens on now (for torchrun's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch):
    """No test downloads ImageNet weights: offline, and the address a closed local port, unless
    a test serves the weights itself (tests/test_download.py)."""
    monkeypatch.setenv('MASNET_OFFLINE', '1')
    monkeypatch.setenv('MASNET_WEIGHTS_URL', 'http://127.0.0.1:9/')

