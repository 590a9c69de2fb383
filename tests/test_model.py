"""MAS-Net model: release parameter layout, equivalence with the plain formulation, head, init."""
import copy
import os
import re

import pytest
import torch
import torch.nn as nn

from ops.checkpoint import CheckpointError
from ops.download import DownloadError
from ops.MASNet import MAM, MSM, TIM, MASBottleneck
from ops.models import TemporalModel, build_model
from ops.runtime import to_channels_last
from ops.temporal_shift import temporal_shift
from tests.conftest import randomize_bn
from tools import release_formulation as ref


def randomize_tim(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, TIM):
            m.conv.weight.data.add_(0.2 * torch.randn(m.conv.weight.shape, generator=g))
    return model


@pytest.mark.parametrize('T', [4, 8])
def test_bottleneck_matches_reference(T):
    torch.manual_seed(0)
    block = MASBottleneck(128, 64, stride=2, num_segments=T,
                          downsample=nn.Sequential(nn.Conv2d(128, 256, 1, 2), nn.BatchNorm2d(256)))
    randomize_tim(randomize_bn(block)).eval()
    x = torch.randn(2 * T, 128, 14, 14)
    with torch.no_grad():
        expected, got = ref.bottleneck(block, x, T), block(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('arch,T', [('resnet50', 4), ('resnet50', 8), ('resnet10', 8)])
@pytest.mark.slow
def test_model_matches_reference(arch, T):
    torch.manual_seed(0)
    model = TemporalModel(10, T, 'MASNet', arch, input_size=64)
    randomize_tim(randomize_bn(model)).eval()
    nn.init.normal_(model.new_fc.weight, 0, 0.1)
    # float64: 16 random blocks amplify rounding differences of equivalent formulas a lot
    model.double()
    x = torch.randn(2, T * 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected, got = ref.temporal_model(model, x), model(x)
    assert expected.abs().max() > 1e-3  # a real signal, not zeros
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_modules_match_reference_in_training_mode():
    """Same outputs and gradients with batch statistics (training) as well."""
    T = 4
    torch.manual_seed(0)
    mam, msm = MAM(64, T), MSM(64, T)
    x = torch.randn(2 * T, 64, 8, 8, requires_grad=True)
    out = msm(mam(x), x)
    expected = ref.msm(msm, ref.mam(mam, x, T), x, T)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    g1 = torch.autograd.grad(out.square().sum(), msm.conv_fc1.weight)[0]
    g2 = torch.autograd.grad(expected.square().sum(), msm.conv_fc1.weight)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-4)


def test_inference_path_equals_autograd_path():
    """Without autograd MSM/TIM write into buffers they own; the result must not change."""
    T = 4
    torch.manual_seed(0)
    block = randomize_tim(randomize_bn(MASBottleneck(256, 64, num_segments=T))).eval()
    x = torch.randn(2 * T, 256, 8, 8)
    x_before = x.clone()
    with torch.no_grad():
        fast = block(x)
    tracked = block(x.requires_grad_())
    assert torch.equal(x.detach(), x_before)  # the block input itself is never overwritten
    torch.testing.assert_close(fast, tracked.detach(), rtol=1e-5, atol=1e-6)
    mid = torch.randn(2 * T, 64, 8, 8)
    with torch.no_grad():
        expected = block.TIM(block.MSM(block.MAM(mid), mid.clone()))
        got = block.temporal(mid.clone())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_tim_gradients_match_conv1d():
    """TIM's fast form (three taps) and its gradients equal the release's permute + Conv1d."""
    T = 4
    torch.manual_seed(0)
    tim = randomize_tim(TIM(32, T))
    x = torch.randn(2 * T, 32, 5, 5, requires_grad=True)
    upstream = torch.randn(2 * T, 32, 5, 5)
    grads = torch.autograd.grad((tim.interact(x) * upstream).sum(), [x, tim.conv.weight])
    expected = torch.autograd.grad((ref.tim(tim, x, T) * upstream).sum(), [x, tim.conv.weight])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def hand_shift(x, T):
    """Temporal shift written by hand: channels [0, C/8) take t+1, [C/8, C/4) take t-1."""
    nt, c, h, w = x.shape
    fold = c // 8
    v = x.view(nt // T, T, c, h, w)
    out = torch.zeros_like(v)
    for t in range(T):
        if t + 1 < T:
            out[:, t, :fold] = v[:, t + 1, :fold]
        if t - 1 >= 0:
            out[:, t, fold:2 * fold] = v[:, t - 1, fold:2 * fold]
        out[:, t, 2 * fold:] = v[:, t, 2 * fold:]
    return out.view(nt, c, h, w)


def test_tim_initialised_as_shift():
    T, C = 8, 64
    tim = TIM(C, T)
    w = tim.conv.weight
    assert w.shape == (C, 1, 3)
    assert torch.equal(w[:8, 0], torch.tensor([0., 0., 1.]).expand(8, 3))
    assert torch.equal(w[8:16, 0], torch.tensor([1., 0., 0.]).expand(8, 3))
    assert torch.equal(w[16:, 0], torch.tensor([0., 1., 0.]).expand(48, 3))
    x = torch.randn(2 * T, C, 5, 5)
    torch.testing.assert_close(tim(x), hand_shift(x, T))
    torch.testing.assert_close(tim.interact(x), hand_shift(x, T))
    torch.testing.assert_close(temporal_shift(x, T), hand_shift(x, T))


RELEASE_SHAPES = {
    'base_model.conv1.weight': (64, 3, 7, 7),
    'base_model.conv1.bias': (64,),
    'base_model.bn1.running_var': (64,),
    'base_model.layer1.0.conv1.bias': (64,),
    'base_model.layer1.0.conv3.weight': (256, 64, 1, 1),
    'base_model.layer1.0.downsample.0.weight': (256, 64, 1, 1),
    'base_model.layer1.0.downsample.0.bias': (256,),
    'base_model.layer1.0.downsample.1.running_mean': (256,),
    'base_model.layer1.0.MAM.conv1.weight': (1, 64, 1, 1),
    'base_model.layer1.0.MAM.bn1.weight': (1,),
    'base_model.layer1.0.MAM.conv3.weight': (64, 1, 1, 1),
    'base_model.layer1.0.MSM.conv_fc1.weight': (16, 16, 1, 3, 3),
    'base_model.layer1.0.MSM.bn_fc1.running_mean': (16,),
    'base_model.layer1.0.MSM.conv_fc2.weight': (128, 4, 1, 3, 3),
    'base_model.layer1.0.TIM.conv.weight': (64, 1, 3),
    'base_model.layer4.2.MAM.conv1.weight': (8, 512, 1, 1),
    'base_model.layer4.2.MSM.conv_fc2.weight': (1024, 32, 1, 3, 3),
    'base_model.layer4.2.TIM.conv.weight': (512, 1, 3),
    'base_model.layer3.5.conv2.weight': (256, 256, 3, 3),
    'new_fc.weight': (174, 2048),
    'new_fc.bias': (174,),
}
KEY_PATTERN = re.compile(
    r'^(new_fc\.(weight|bias)|base_model\.(conv1\.(weight|bias)|bn1\.\w+|'
    r'layer[1-4]\.\d+\.(conv[123]\.(weight|bias)|bn[123]\.\w+|downsample\.[01]\.\w+|'
    r'MAM\.(conv1\.weight|bn1\.\w+|conv3\.weight)|MSM\.(conv_fc1\.weight|bn_fc1\.\w+|conv_fc2\.weight)|'
    r'TIM\.conv\.weight)))$')


def test_state_dict_has_release_layout():
    model = TemporalModel(174, 8, 'MASNet', 'resnet50')
    sd = model.state_dict()
    for key, shape in RELEASE_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    bad = [k for k in sd if not KEY_PATTERN.match(k)]
    assert not bad, bad[:5]
    assert sum(1 for k in sd if k.endswith('TIM.conv.weight')) == 16
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 2) == 26.07


def test_optim_policies_cover_every_parameter_once():
    model = TemporalModel(5, 4, 'MASNet', 'resnet10', input_size=64)
    groups = {g['name']: g for g in model.get_optim_policies()}
    ids = [id(p) for g in groups.values() for p in g['params']]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    def mults(name):
        return groups[name]['lr_mult'], groups[name]['decay_mult']

    assert mults('first_conv_weight') == (1, 1)
    assert mults('first_conv_bias') == (2, 0)
    assert mults('normal_bias') == (2, 0)
    assert (groups['bn']['lr_mult'], groups['bn']['decay_mult']) == (1, 0)
    assert groups['first_conv_weight']['params'][0] is model.base_model.conv1.weight
    assert groups['first_conv_bias']['params'][0] is model.base_model.conv1.bias
    bn_ids = {id(p) for p in groups['bn']['params']}
    msm = model.base_model.layer1[0].MSM
    assert id(msm.bn_fc1.weight) in bn_ids  # BatchNorm3d
    normal = {id(p) for p in groups['normal_weight']['params']}
    assert {id(msm.conv_fc1.weight), id(model.base_model.layer1[0].TIM.conv.weight),
            id(model.new_fc.weight)} <= normal

    model.extra = nn.LayerNorm(4)
    with pytest.raises(ValueError, match='extra'):
        model.get_optim_policies()


def _fake_torchvision_resnet18():
    """A torchvision-layout resnet18 state dict (no conv biases), random values."""
    plain = TemporalModel(1000, 1, 'TSN', 'resnet18', dropout=0).base_model
    g = torch.Generator().manual_seed(3)
    sd = {}
    for k, v in plain.state_dict().items():
        is_norm = 'bn' in k or 'downsample.1' in k
        if k.endswith('.bias') and not k.startswith('fc') and not is_norm:
            continue  # torchvision convs have no bias
        sd[k] = torch.randn(v.shape, generator=g) if v.is_floating_point() else v
    sd['fc.weight'] = torch.randn(1000, 512, generator=g)
    return sd


def test_imagenet_pretrain_loads_from_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    with pytest.raises(DownloadError, match='--pretrain none'):
        build_model(5, 4, 'MASNet', 'resnet18', pretrain='imagenet')

    sd = _fake_torchvision_resnet18()
    os.makedirs(tmp_path / 'hub' / 'checkpoints')
    torch.save(sd, tmp_path / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth')
    model = build_model(5, 4, 'MASNet', 'resnet18', pretrain='imagenet')
    own = model.state_dict()
    for k in ('conv1.weight', 'layer2.0.downsample.0.weight', 'layer4.1.bn2.running_var',
              'layer3.1.conv2.weight'):
        assert torch.equal(own['base_model.' + k], sd[k]), k
    assert torch.count_nonzero(own['base_model.layer3.1.conv2.bias']) == 0
    expected = sum(1 for k in sd if not k.startswith('fc.'))
    assert model.num_pretrained_tensors == expected


def test_pretrain_path_with_wrong_arch_names_shapes(tmp_path):
    path = tmp_path / 'r18.pth'
    torch.save(_fake_torchvision_resnet18(), path)
    with pytest.raises(CheckpointError, match='shape mismatch'):
        build_model(5, 4, 'MASNet', 'resnet50', pretrain=str(path))


@pytest.mark.slow
def test_mixed_precision_runs_and_stays_close():
    """--amp: the MAS modules accept autocast's mixed dtypes, forward and backward."""
    torch.manual_seed(0)
    model = TemporalModel(5, 4, 'MASNet', 'resnet10', input_size=64)
    randomize_tim(randomize_bn(model))
    nn.init.normal_(model.new_fc.weight, 0, 0.1)
    x = torch.randn(2, 12, 64, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model(x).float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        full = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            mixed = model(x)
    assert mixed.dtype == torch.bfloat16
    assert torch.corrcoef(torch.stack([full.flatten(), mixed.float().flatten()]))[0, 1] > 0.99


def test_select_interact_gradients_float64():
    """The fused blend + TIM's hand-written backward, against numerical gradients."""
    from ops.mas_fused import select_and_interact
    g = torch.Generator().manual_seed(0)
    N, T, C, r, H, W = 2, 4, 8, 2, 3, 3
    shapes = [(N * T, C, H, W), (N * T, r, H, W), (C, r, 1, 1), (N, C, H, W), (C, 1, 3)]
    inputs = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
    inputs[3].data.uniform_(0, 1, generator=g)  # a softmax weight
    assert torch.autograd.gradcheck(select_and_interact, inputs)


def saved_bytes(fn, *args):
    """Bytes of the distinct storages autograd saves for backward while `fn(*args)` runs."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(storages.values())


@pytest.mark.slow
def test_training_keeps_no_extra_full_size_activations():
    """In training a block's MAM -> MSM -> TIM keeps its input alive and only small tensors
    besides (the motion and the blend are recomputed in backward), and still computes the
    reference's gradients."""
    T = 4
    torch.manual_seed(0)
    block = randomize_tim(MASBottleneck(256, 64, num_segments=T)).double()
    x = torch.randn(2 * T, 64, 14, 14, dtype=torch.float64, requires_grad=True)
    full_size = x.numel() * x.element_size()
    saved = saved_bytes(block.temporal, x)
    # x itself plus MSM's per-clip (N, C, H, W) tensors (0.7 of x at T=4); autograd through
    # the plain ops also keeps the motion and the blend: 3.7 times x
    assert full_size <= saved < 2 * full_size
    upstream = torch.randn(x.shape, dtype=torch.float64)
    params = [block.MAM.conv1.weight, block.MAM.conv3.weight, block.MSM.conv_fc2.weight,
              block.TIM.conv.weight]
    got = torch.autograd.grad((block.temporal(x) * upstream).sum(), [x] + params)
    reference = ref.tim(block.TIM, ref.msm(block.MSM, ref.mam(block.MAM, x, T), x, T), T)
    expected = torch.autograd.grad((reference * upstream).sum(), [x] + params)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_fused_training_path_under_autocast():
    """Mixed dtypes (bf16 activations, fp32 parameters): output in the activations' dtype,
    every gradient in its input's dtype and close to the fp32 gradients."""
    T = 4
    torch.manual_seed(0)
    block = randomize_tim(MASBottleneck(256, 64, num_segments=T))
    x = torch.randn(2 * T, 64, 8, 8)
    weights = [block.MAM.conv3.weight, block.TIM.conv.weight]
    full = torch.autograd.grad(block.temporal(x).square().sum(), weights)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block.temporal(x.bfloat16())
    assert out.dtype == torch.bfloat16
    mixed = torch.autograd.grad(out.float().square().sum(), weights)
    for a, b in zip(mixed, full):
        assert a.dtype == torch.float32
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


def test_graph_recording_path_matches_reference(monkeypatch):
    """The out-of-place 4-D form exporters record and torch.compile fuses: the reference's
    outputs and gradients in float64."""
    from ops import MASNet
    T = 4
    torch.manual_seed(0)
    block = randomize_tim(randomize_bn(MASBottleneck(256, 64, num_segments=T))).double()
    x = torch.randn(2 * T, 256, 8, 8, dtype=torch.float64, requires_grad=True)
    expected = ref.bottleneck(block, x, T)
    monkeypatch.setattr(MASNet, 'recording_graph', lambda: True)
    got = block(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    upstream = torch.randn(got.shape, dtype=torch.float64)
    params = [x, block.MSM.conv_fc1.weight, block.TIM.conv.weight]
    for a, b in zip(torch.autograd.grad((got * upstream).sum(), params),
                    torch.autograd.grad((expected * upstream).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.slow
def test_channels_last_model_computes_the_same(train):
    """A channels-last (NHWC) model runs MAS's element-wise work on NHWC views and its 1x1
    convs as NHWC matmuls; outputs and gradients equal the NCHW model's in float64."""
    torch.manual_seed(0)
    model = TemporalModel(5, 4, 'MASNet', 'resnet10', input_size=64, dropout=0)
    model = randomize_tim(randomize_bn(model)).double().train(train)
    nn.init.normal_(model.new_fc.weight, 0, 0.1)
    nhwc = to_channels_last(copy.deepcopy(model))
    block = nhwc.base_model.layer1[0]
    seen = []
    block.conv2.register_forward_pre_hook(lambda m, i: seen.append(i[0].is_contiguous()))
    block.register_forward_hook(
        lambda m, i, o: seen.append(o.is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(2, 12, 64, 64, dtype=torch.float64)
    with torch.set_grad_enabled(train):
        expected, got = model(x), nhwc(x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert seen[-1] and (train or seen[0] is False)  # NHWC through the block (and TIM's out)
    if train:
        upstream = torch.randn(expected.shape, dtype=torch.float64)
        (expected * upstream).sum().backward()
        (got * upstream).sum().backward()
        for (name, p), q in zip(model.named_parameters(), nhwc.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_the_model_reads_no_file_and_the_builder_loads_the_backbone(tmp_path, monkeypatch):
    with pytest.raises(TypeError):
        TemporalModel(5, 4, 'MASNet', 'resnet10', pretrain='imagenet')  # no paths, no loading
    stem = {'conv1.weight': torch.randn(64, 3, 7, 7), 'fc.weight': torch.randn(1000, 512)}
    path = str(tmp_path / 'stem.pth')
    torch.save(stem, path)
    torch.manual_seed(0)
    built = build_model(5, 4, 'MASNet', 'resnet10', pretrain=path, input_size=64)
    assert torch.equal(built.base_model.conv1.weight, stem['conv1.weight'])
    assert built.num_pretrained_tensors == 1 and built.initialised_norms == set()

    def no_reading(*args, **kwargs):
        raise AssertionError('a file was read')

    monkeypatch.setattr(torch, 'load', no_reading)
    torch.manual_seed(0)
    plain = TemporalModel(5, 4, 'MASNet', 'resnet10', input_size=64)
    torch.manual_seed(0)
    random = build_model(5, 4, 'MASNet', 'resnet10', pretrain='none', input_size=64)
    for key, value in plain.state_dict().items():  # loading draws no random number
        assert torch.equal(random.state_dict()[key], value), key
        if key != 'base_model.conv1.weight':
            assert torch.equal(built.state_dict()[key], value), key


def test_base_model_is_still_the_temporal_type_keyword():
    model = TemporalModel(5, 4, base_model='TSM', backbone='resnet10', input_size=64)
    assert model.temporal_type == 'TSM' and isinstance(model.base_model, nn.Module)
    assert TemporalModel(5, 4, backbone='resnet10').temporal_type == 'MASNet'
    with pytest.raises(ValueError, match='name the same thing'):
        TemporalModel(5, 4, 'TSN', base_model='TSM', backbone='resnet10')
