"""The forms of a MAS block (ops/MASNet.py): the switch, the readable and the compiled forms
against ops/reference.py in float64, and the compiled form's fallback to eager."""
import warnings

import pytest
import torch

from ops import MASNet, mas_fused
from ops import reference as ref
from ops.errors import UserError
from ops.models import TemporalModel
from tests.conftest import randomize_bn
from tests.test_model import randomize_tim

T = 4


@pytest.fixture(autouse=True)
def keep_default_form(monkeypatch):
    monkeypatch.setattr(MASNet._default, 'form', MASNet._default.form)


def block_and_input(seed=0, channels=64):
    torch.manual_seed(seed)
    block = MASNet.MASBottleneck(4 * channels, channels, num_segments=T)
    block = randomize_tim(randomize_bn(block)).double()
    x = torch.randn(2 * T, channels, 6, 6, dtype=torch.float64, requires_grad=True)
    return block, x


def reference_chain(block, x):
    return ref.tim(block.TIM, ref.msm(block.MSM, ref.mam(block.MAM, x, T), x, T), T)


def assert_matches_reference(block, x, train):
    """`block.temporal` equals the reference chain; with `train` its gradients too."""
    block.train(train)
    params = [x, block.MAM.conv1.weight, block.MAM.conv3.weight, block.MSM.conv_fc1.weight,
              block.MSM.conv_fc2.weight, block.TIM.conv.weight]
    with torch.set_grad_enabled(train):
        expected = reference_chain(block, x)
        got = block.temporal(x.clone() if not train else x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    if train:
        upstream = torch.randn(got.shape, dtype=torch.float64)
        for a, b in zip(torch.autograd.grad((got * upstream).sum(), params),
                        torch.autograd.grad((expected * upstream).sum(), params)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('train', [False, True])
def test_reference_form_is_the_reference(train):
    block, x = block_and_input()
    MASNet.set_form('reference', block)
    assert_matches_reference(block, x, train)


def test_reference_form_runs_the_module_forwards():
    """The switch runs MAM.forward -> MSM.forward -> TIM.forward (readable); the fast forms do
    not call MAM's and MSM's forward."""
    block, x = block_and_input()
    called = []
    for name in ('MAM', 'MSM', 'TIM'):
        getattr(block, name).register_forward_hook(lambda m, i, o, n=name: called.append(n))
    MASNet.set_form('reference', block)
    with torch.no_grad():
        block.temporal(x)
        assert called == ['MAM', 'MSM', 'TIM']
        MASNet.set_form('eager', block)
        block.temporal(x.clone())
    assert called == ['MAM', 'MSM', 'TIM', 'TIM']  # TIM's hook: FLOP counting relies on it


def test_whole_model_in_reference_form_equals_eager_form():
    torch.manual_seed(0)
    model = TemporalModel(5, T, 'MASNet', 'resnet10', input_size=32, dropout=0)
    model = randomize_tim(randomize_bn(model)).double().eval()
    torch.nn.init.normal_(model.new_fc.weight, 0, 0.1)
    x = torch.randn(2, 3 * T, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        fast = model(x)
        readable = MASNet.set_form('reference', model)(x)
        expected = ref.temporal_model(model, x)
    torch.testing.assert_close(readable, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast, expected, rtol=1e-9, atol=1e-10)


def test_form_switch_defaults(monkeypatch):
    monkeypatch.setattr(MASNet._default, 'form', None)
    monkeypatch.delenv(MASNet.FORM_ENV, raising=False)
    assert MASNet.MASBasicBlock(16, 16, num_segments=T).form == 'eager'
    monkeypatch.setenv(MASNet.FORM_ENV, 'reference')
    assert MASNet.MASBasicBlock(16, 16, num_segments=T).form == 'reference'
    monkeypatch.setenv(MASNet.FORM_ENV, 'fast')
    with pytest.raises(UserError, match='MASNET_FORM: unknown MAS block form'):
        MASNet.MASBasicBlock(16, 16, num_segments=T)
    MASNet.set_form('compiled')  # the setter wins over the variable
    assert MASNet.MASBasicBlock(16, 16, num_segments=T).form == 'compiled'
    with pytest.raises(UserError, match="unknown MAS block form 'fused'"):
        MASNet.set_form('fused')


def plain_call(math, *args):
    return math(*args)


def test_compiler_formulation_gradcheck():
    """The functions the compiler gets (run uncompiled here), forward and hand-written backward:
    numerical gradients, and the eager form's outputs and gradients."""
    g = torch.Generator().manual_seed(0)
    N, C, r, H, W = 2, 8, 2, 3, 3
    shapes = [(N * T, C, H, W), (N * T, r, H, W), (C, r, 1, 1), (N, C, H, W), (C, 1, 3)]
    inputs = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
    inputs[3].data.uniform_(0, 1, generator=g)

    def fused(*args):
        return mas_fused.FusedSelectInteract.apply(*args, plain_call)
    assert torch.autograd.gradcheck(fused, inputs)
    assert torch.autograd.gradcheck(mas_fused.select_interact_math, inputs)
    upstream = torch.randn(shapes[0], generator=g, dtype=torch.float64)
    got, want = fused(*inputs), mas_fused.select_and_interact(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad((got * upstream).sum(), inputs),
                    torch.autograd.grad((want * upstream).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.fixture
def fresh_compiled(monkeypatch):
    """The compiled function is made anew in the test (and forgotten after it)."""
    monkeypatch.setattr(mas_fused._Compiled, 'functions', {})
    monkeypatch.setattr(mas_fused._Compiled, 'failed', False)


def test_compiled_form_falls_back_to_eager_without_a_compiler(monkeypatch, fresh_compiled):
    """A compiler that fails at first call (as Inductor does without a C++ compiler): one
    warning, then the eager form, with the reference's outputs and gradients."""
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            calls.append(fn.__name__)
            raise RuntimeError('InvalidCxxCompiler: No working C++ compiler found')
        return compiled
    monkeypatch.setattr(mas_fused.torch, 'compile', broken_compile)
    block, x = block_and_input()
    MASNet.set_form('compiled', block)
    with pytest.warns(RuntimeWarning, match='torch.compile failed .*C\\+\\+ compiler'):
        assert_matches_reference(block, x, train=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no second warning
        assert_matches_reference(block, x, train=False)
        assert_matches_reference(block, x, train=True)
    assert calls == ['select_interact_math']  # tried once, never again


@pytest.mark.slow
def test_compiled_form_matches_reference(fresh_compiled):
    """The regionally compiled chain (torch.compile, Inductor): the reference's outputs and
    gradients in float64, in inference and training, without falling back."""
    block, x = block_and_input()
    MASNet.set_form('compiled', block)
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)
        assert_matches_reference(block, x, train=True)
        assert_matches_reference(block, x, train=False)
    assert not mas_fused._Compiled.failed
