"""ONNX (run with onnxruntime) and TorchScript exports equal eager PyTorch; tools/export.py."""
import os

import numpy as np
import pytest
import torch

from ops.export import example_input, export_and_check, load_runner
from ops.models import TemporalModel
from ops.temporal import temporal_types
from tests.conftest import randomize_bn
from tools.export import main as export_main

pytest.importorskip('onnxruntime')


def randomize_tim(model, seed=0):
    """TIM weights away from the shift initialisation (all three taps used)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith('TIM.conv.weight'):
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


@pytest.mark.parametrize('temporal_type', temporal_types())
@pytest.mark.slow
def test_onnx_and_torchscript_match_eager(temporal_type, tmp_path):
    torch.manual_seed(0)
    model = TemporalModel(10, 8, temporal_type, 'resnet10', input_size=64)
    model = randomize_tim(randomize_bn(model)).eval()
    torch.nn.init.normal_(model.new_fc.weight, 0, 0.1)  # logits of a useful size
    real = example_input(model, seed=5).clamp(-2, 2)
    with torch.no_grad():  # as in tools/export.py: the eager side takes the in-place path
        results = export_and_check(model, str(tmp_path / temporal_type), real=real, tolerance=1e-4)
    for fmt in ('onnx', 'torchscript'):
        assert set(results[fmt]) == {'random', 'real'}
        assert max(results[fmt].values()) <= 1e-4
    # the ONNX file itself, run on a batch of 3 (dynamic batch axis), gives eager's logits
    x = example_input(model, batch=3, seed=7)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(expected).max() > 0.1  # not a trivially small output
    got = load_runner('onnx', str(tmp_path / f'{temporal_type}.onnx'))(x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    got = load_runner('torchscript', str(tmp_path / f'{temporal_type}.pt'))(x)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_export_keeps_eager_inference_in_place(tmp_path):
    """Exporting does not switch eager inference to the out-of-place path (and vice versa)."""
    from ops import MASNet
    assert MASNet.reuse_buffers() is False  # autograd is on here
    with torch.no_grad():
        assert MASNet.reuse_buffers() is True
        traced = []
        model = TemporalModel(4, 4, 'MASNet', 'resnet10', input_size=32).eval()
        model.base_model.layer1[0].register_forward_hook(
            lambda m, i, o: traced.append(MASNet.reuse_buffers()))
        torch.jit.trace(model, example_input(model), check_trace=False)
        model(example_input(model))
    assert traced == [False, True]


@pytest.mark.slow
def test_export_command_on_a_checkpoint(tiny_data_root, tmp_path, capsys):
    torch.manual_seed(0)
    model = randomize_bn(TemporalModel(8, 4, 'MASNet', 'resnet10', input_size=64))
    weights = str(tmp_path / 'model.pth.tar')
    torch.save({'state_dict': model.state_dict(), 'type': 'MASNet', 'arch': 'resnet10',
                'num_segments': 4, 'input_size': 64}, weights)
    video = os.path.join(tiny_data_root, 'synthetic', 'frames', 'valid_3_0000')
    # a file without class names: --dataset names them
    # (tests/test_checkpoint_metadata.py: with them)
    names = ['--dataset', 'synthetic', '--dataset_path', tiny_data_root]
    export_main(['--weights', weights, '--video', video, *names])
    out = capsys.readouterr().out
    assert out.count('on real input') == 2 and out.count('on random input') == 2
    assert os.path.isfile(tmp_path / 'model.onnx') and os.path.isfile(tmp_path / 'model.pt')
    with pytest.raises(SystemExit, match='differs from eager PyTorch'):
        export_main(['--weights', weights, '--video', video, '--format', 'torchscript',
                     '--tolerance', '-1', '--output', str(tmp_path / 'again'), *names])
