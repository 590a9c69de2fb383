"""The memory-traffic account (tools/traffic.py): its formulas against torch.profiler, the roofline,
and the tool and the GPU check on a CPU."""
import pytest
import torch

from archs.resnet import Bottleneck
from ops.errors import UserError
from tools import gpu_check, memory_traffic
from tools.traffic import (
    GPUS,
    Block,
    Op,
    bottleneck_blocks,
    full_passes,
    gpu_named,
    mas_ops,
    op_seconds,
    plain_block_ops,
    predict,
    profile_mas_block,
    profiled_ops,
    run_seconds,
    traffic,
)


@pytest.mark.parametrize('train', [False, True])
def test_mas_chain_formula_matches_the_profiler(train):
    formula, profiled, full = profile_mas_block(planes=64, height=8, clips=2, segments=8,
                                                train=train)
    # the full-size (N*T, C, H, W) passes of one block: eager inference 8.5 reads + 4.75
    # writes (T = 8), training (forward + backward) 38.25 + 20.25
    expected = (38.25, 20.25) if train else (8.5, 4.75)
    assert full_passes(formula, full, 8) == expected
    assert full_passes(profiled, full, 8) == expected
    assert len(formula) == len(profiled)
    # every tensor, small ones included: within 0.1 % (the formula splits some outputs)
    total = sum(o.elements() for o in profiled)
    assert sum(o.elements() for o in formula) == pytest.approx(total, rel=1e-3)


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('stride', [1, 2])
def test_plain_block_formula_matches_the_profiler(train, stride):
    inplanes, planes, h, images = 256, 64 * stride, 8, 8
    downsample = torch.nn.Sequential(torch.nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False),
                                     torch.nn.BatchNorm2d(4 * planes)) if stride == 2 else None
    block = Bottleneck(inplanes, planes, stride, downsample, bias=False).train(train)
    x = torch.randn(images, inplanes, h, h, requires_grad=train)
    grad = torch.randn(images, 4 * planes, h // stride, h // stride)

    def run():
        with torch.set_grad_enabled(train):
            out = block(x)
            if train:
                out.backward(grad)

    profiled = profiled_ops(run)
    formula = plain_block_ops(Block(2, 0 if stride == 2 else 1, inplanes, planes, stride, h, h),
                              images, train)
    assert len(formula) == len(profiled)
    total = sum(o.elements() for o in profiled)
    assert sum(o.elements() for o in formula) == pytest.approx(total, rel=1e-3)


def test_fused_chain_passes_and_shapes():
    blocks = bottleneck_blocks('resnet50', 224)
    assert len(blocks) == 16 and (blocks[0].height, blocks[-1].height) == (56, 7)
    # layer2.0's MAS chain runs before the stride-2 conv2: at 56 x 56
    assert (blocks[3].planes, blocks[3].height, blocks[3].stride) == (128, 56, 2)
    full = 2 * 8 * 64 * 14 * 14
    assert full_passes(mas_ops(64, 14, 14, 2, 8, False, 'fused'), full, 8) == (2, 1)
    assert full_passes(mas_ops(64, 14, 14, 2, 8, True, 'fused'), full, 8) == (6, 2)
    with pytest.raises(UserError, match='resnet18'):
        bottleneck_blocks('resnet18')


def test_roofline_values():
    h100 = GPUS['H100']
    memory_bound = Op('add', (10 ** 9, 10 ** 9), (10 ** 9,), 10 ** 9)
    # 3e9 elements x 2 bytes / 3.35e12 B/s; its 1 GFLOP at 67 TFLOP/s takes far less
    assert op_seconds(memory_bound, h100, 'bf16') == pytest.approx(6e9 / 3.35e12)
    compute_bound = Op('conv', (1000,), (1000,), 10 ** 12, 'conv')
    assert op_seconds(compute_bound, h100, 'bf16') == pytest.approx(1e12 / 989e12)
    assert op_seconds(compute_bound, h100, 'fp32') == pytest.approx(1e12 / 495e12)  # TF32
    matmul = Op('bmm', (1000,), (1000,), 10 ** 12, 'matmul')
    assert op_seconds(matmul, h100, 'fp32') == pytest.approx(1e12 / 67e12)  # no TF32
    # host-bound: 3 tiny ops issued every 6 us end at 18 us plus the last op's time
    tiny = [Op('x', (1,), (1,))] * 3
    assert run_seconds(tiny, h100, 'bf16', 6.0) == pytest.approx(18e-6, rel=1e-3)
    assert traffic([memory_bound], 'fp32') == (12 * 10 ** 9, 10 ** 9, 1)


def test_prediction_ratios():
    large = predict('H100', 'bf16', clips=8, train=False)
    # at 8 clips the GPU is never waiting for the host: eager = roofline
    assert large['eager_ratio'] == pytest.approx(large['eager_roofline_ratio'], rel=0.01)
    assert 1.3 < large['eager_ratio'] < 1.9 and 1.0 < large['fused_ratio'] < 1.25
    assert large['plain']['flops'] == pytest.approx(8 * 8 * 2 * 4.1e9, rel=0.03)  # 4.1 GMACs
    small = predict('H100', 'bf16', clips=1, train=True)
    assert small['eager_ratio'] > small['eager_roofline_ratio']  # host-bound at one clip
    assert small['eager']['ops'] > 4 * small['plain']['ops']


def test_gpu_names():
    assert gpu_named('NVIDIA H100 80GB HBM3') == 'H100'
    assert gpu_named('NVIDIA A100-SXM4-80GB') == 'A100'
    assert gpu_named('NVIDIA H200') == 'H200'
    assert gpu_named('Tesla V100-SXM2-16GB') == 'H100'  # the stated default


def test_memory_traffic_tool(capsys):
    results = memory_traffic.main(['--clips', '1', '--gpu', 'A100', '--dtype', 'bf16',
                                   '--no_blocks'])
    out = capsys.readouterr().out
    assert len(results) == 2 and '| A100 | bf16 | 1 | inference |' in out


def test_gpu_check_prints_the_prediction_without_a_gpu(capsys, monkeypatch):
    """The CPU path of scripts/gpu_check.sh."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert gpu_check.main(['--predict']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'gpu_check: no CUDA GPU on this machine: nothing to check'
    # fp32, AMP fp16, AMP bf16 x inference, train: nothing measured, the H100's prediction
    assert len(lines) == 7 and all('measured n/a, predicted for H100' in line
                                   for line in lines[1:])
    assert gpu_check.main(['--predict', 'A100']) == 0
    assert 'predicted for A100' in capsys.readouterr().out
