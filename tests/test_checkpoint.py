"""Checkpoint I/O: release layout round trip, strict loading errors, atomic writes."""
import os

import pytest
import torch

from ops import checkpoint as C
from ops.models import TemporalModel, model_from_checkpoint


def small_model(num_class=5, seed=0):
    torch.manual_seed(seed)
    return TemporalModel(num_class, 4, 'MASNet', 'resnet10', input_size=64).eval()


def release_checkpoint(model, path):
    """A checkpoint as the release writes it: DataParallel keys, four entries."""
    state = {'epoch': 70, 'arch': 'resnet10', 'best_prec1': 49.2,
             'state_dict': {'module.' + k: v for k, v in model.state_dict().items()}}
    C.save_checkpoint(state, str(path))


@pytest.mark.slow
def test_release_layout_round_trip(tmp_path):
    model = small_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / 'release.pth.tar'
    release_checkpoint(model, path)
    data = C.read_checkpoint(str(path))
    assert data['epoch'] == 70 and not any(k.startswith('module.') for k in data['state_dict'])
    loaded = model_from_checkpoint(data, str(path), num_class=5, num_segments=4, input_size=64)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 12, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_class_count_mismatch_is_named(tmp_path):
    path = tmp_path / 'c.pth.tar'
    release_checkpoint(small_model(num_class=174), path)
    with pytest.raises(C.CheckpointError, match='174 classes, the dataset has 400'):
        model_from_checkpoint(C.read_checkpoint(str(path)), str(path), num_class=400)
    with pytest.raises(C.CheckpointError,
                       match=r'new_fc.weight: \(174, 512\) in file vs \(400, 512\)'):
        C.load_model_weights(small_model(num_class=400), str(path))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = small_model().state_dict()
    sd.pop('base_model.layer1.0.TIM.conv.weight')
    sd['base_model.extra.weight'] = torch.zeros(1)
    with pytest.raises(C.CheckpointError) as err:
        C.load_state_dict_checked(small_model(), sd, source='x')
    message = str(err.value)
    assert 'layer1.0.TIM.conv.weight' in message and 'extra.weight' in message
    assert '\n' not in message


def test_segment_count_mismatch(tmp_path):
    model = small_model()
    path = tmp_path / 's.pth.tar'
    C.save_checkpoint({'epoch': 1, 'arch': 'resnet10', 'num_segments': 4, 'best_prec1': 0,
                       'state_dict': model.state_dict()}, str(path))
    with pytest.raises(C.CheckpointError, match='trained with 4 segments, not 8'):
        model_from_checkpoint(C.read_checkpoint(str(path)), str(path), 5, num_segments=8)


def test_unreadable_files(tmp_path):
    with pytest.raises(C.CheckpointError, match='does not exist'):
        C.read_checkpoint(str(tmp_path / 'none.pth.tar'))
    path = tmp_path / 'cut.pth.tar'
    C.save_checkpoint({'epoch': 1, 'state_dict': small_model().state_dict()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])
    with pytest.raises(C.CheckpointError, match='cannot be read'):
        C.read_checkpoint(str(path))


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / 'ckpt.pth.tar'
    C.save_checkpoint({'epoch': 1, 'state_dict': {'w': torch.ones(3)}}, str(path))

    def crash(obj, f, *args, **kwargs):
        f.write(b'partial bytes')
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint({'epoch': 2, 'state_dict': {'w': torch.zeros(3)}}, str(path))
    monkeypatch.undo()
    assert C.read_checkpoint(str(path))['epoch'] == 1
    assert os.listdir(tmp_path) == ['ckpt.pth.tar']  # no temporary file left behind

    def crash_in_cleanup(obj, f, *args, **kwargs):  # as torch.save's zip writer does on Ctrl-C
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError('unexpected pos')
    monkeypatch.setattr(torch, 'save', crash_in_cleanup)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint({'epoch': 3, 'state_dict': {'w': torch.zeros(3)}}, str(path))
    monkeypatch.undo()
    assert C.read_checkpoint(str(path))['epoch'] == 1
    assert os.listdir(tmp_path) == ['ckpt.pth.tar']


@pytest.mark.slow
def test_tune_from_loads_the_backbone_but_not_the_head(tmp_path):
    """--tune_from: a checkpoint of another dataset (other class count) initialises the backbone."""
    source = small_model(num_class=174, seed=1)
    release_checkpoint(source, tmp_path / 'sthv1.pth.tar')
    target = small_model(num_class=5, seed=2)
    head_before = {k: v.clone() for k, v in target.new_fc.state_dict().items()}
    C.load_model_weights(target, str(tmp_path / 'sthv1.pth.tar'), skip_prefixes=('new_fc.',))
    source_state = source.state_dict()
    for name, value in target.state_dict().items():
        if name.startswith('new_fc.'):
            assert torch.equal(value, head_before[name.split('.', 1)[1]])
        else:
            assert torch.equal(value, source_state[name]), name
    # without the skip: a named mismatch
    with pytest.raises(C.CheckpointError, match='new_fc.weight'):
        C.load_model_weights(small_model(num_class=5), str(tmp_path / 'sthv1.pth.tar'))


def test_nested_dataparallel_prefixes_load(tmp_path):
    """``module.module.`` keys (a DataParallel model wrapped again) load like ``module.``."""
    model = small_model()
    path = str(tmp_path / 'twice_wrapped.pth.tar')
    torch.save({'type': 'MASNet', 'arch': 'resnet10', 'num_segments': 4, 'input_size': 64,
                'state_dict': {'module.module.' + k: v for k, v in model.state_dict().items()}},
               path)
    assert set(C.read_checkpoint(path)['state_dict']) == set(model.state_dict())
    loaded = model_from_checkpoint(path)  # a path: the builder reads the file
    assert loaded.num_class == 5
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize('content,problem', [
    (b'', "is not a checkpoint: empty file"),
    (b'epoch,top1\n1,20.5\n', "is not a PyTorch checkpoint (it starts with b'epoc')")])
def test_empty_and_text_files_are_one_line_naming_the_file(tmp_path, content, problem):
    path = tmp_path / 'ckpt.pth.tar'
    path.write_bytes(content)
    with pytest.raises(C.CheckpointError) as err:
        model_from_checkpoint(str(path))
    assert str(err.value) == f"checkpoint '{path}' {problem}"
