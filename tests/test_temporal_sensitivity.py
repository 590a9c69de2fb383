"""Does the model use time? test.py --frame_order and --temporal_sensitivity: the same frames
and views in reversed / shuffled order, the score files that record it, the twin accounting."""
import json
import os

import numpy as np
import pytest
import torch

import average_scores
import test as test_main
from ops.checkpoint import save_checkpoint
from ops.dataset import ViewProtocol
from ops.evaluation import order_sensitivity, time_reversed_pairs
from ops.models import TemporalModel
from ops.scores import load_scores, save_scores
from ops.synthetic import SYNTHETIC_CLASSES
from tests.conftest import randomize_bn

T, SIZE = 4, 32


def test_time_reversed_pairs_are_derived_from_the_names():
    assert time_reversed_pairs(SYNTHETIC_CLASSES) == {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4,
                                                      6: 7, 7: 6}
    names = ['Pushing something from left to right', 'Moving something up',
             'Picking something up', 'Pushing something from right to left',
             'Turning the camera upwards while filming something', 'Moving something down',
             'Putting something upright on the table',
             'Turning the camera downwards while filming something',
             'Turning something anticlockwise', 'Turning something clockwise']
    assert time_reversed_pairs(names) == {0: 3, 3: 0, 1: 5, 5: 1, 4: 7, 7: 4, 8: 9, 9: 8}


def test_changed_and_twin_shares_of_a_constructed_case():
    """6 videos of the twins 0/1 and 2/3 and of the unpaired class 4, one unlabelled: the
    shares counted by hand."""
    twins = {0: 1, 1: 0, 2: 3, 3: 2}
    labels = np.array([0, 0, 1, 2, 4, -1])
    forward = np.eye(5)[[0, 0, 1, 3, 4, 2]]  # right: videos 0, 1, 2, 4 (4 of 5 labelled)
    reversed_ = np.eye(5)[[1, 0, 0, 3, 1, 2]]  # twins given: videos 0, 2 and 3 (3 of 4 paired)
    row = order_sensitivity(forward, reversed_, labels, twins)
    assert row['top1'] == pytest.approx(20.0)  # video 1
    assert row['changed'] == pytest.approx(100 * 3 / 6)  # videos 0, 2, 4
    assert row['twin'] == pytest.approx(75.0) and row['twin_videos'] == 4
    assert row['pairs'] == {'0/1': [pytest.approx(200 / 3), 3], '2/3': [100.0, 1]}
    same = order_sensitivity(forward, forward, labels, twins)
    assert same['changed'] == 0 and same['twin'] == 25.0 and same['top1'] == 80.0
    assert order_sensitivity(forward, forward, labels, {})['twin'] is None


def test_orders_reorder_the_frames_of_each_clip_only():
    """Reversed: each clip's forward indices last to first; shuffled: a permutation of each
    clip's indices, the same for the same (seed, video), drawn after the seeded clips (so the
    random sampling picks the forward order's frames)."""
    def indices(key='video_a', **flags):
        views = ViewProtocol.from_flags(**flags)
        return views.sample_indices(40, 8, key).reshape(views.num_clips, 8)

    for flags in (dict(twice_sample=True), dict(dense_sample=True, dense_sample_num=3),
                  dict(test_sampling='random', dense_sample_num=3, test_seed=4)):
        forward = indices(**flags)
        np.testing.assert_array_equal(indices(frame_order='reversed', **flags), forward[:, ::-1])
        shuffled = indices(frame_order='shuffled', **flags)
        np.testing.assert_array_equal(np.sort(shuffled, axis=1), np.sort(forward, axis=1))
        assert (shuffled != forward).any()
        np.testing.assert_array_equal(indices(frame_order='shuffled', **flags), shuffled)
        assert (indices(key='video_b', frame_order='shuffled', **flags)
                != indices(key='video_b', **flags)).any()
    shuffled = indices(frame_order='shuffled', test_seed=1)
    assert (indices(frame_order='shuffled', test_seed=2) != shuffled).any()


def test_the_order_is_a_setting_and_in_the_score_name():
    assert ViewProtocol.from_flags().name_tag() == ''
    reversed_ = ViewProtocol.from_flags(frame_order='reversed', test_seed=3)
    assert reversed_.test_seed is None and reversed_.name_tag() == '_reversed'
    assert reversed_.settings()['frame_order'] == 'reversed'
    shuffled = ViewProtocol.from_flags(frame_order='shuffled', test_seed=3)
    assert shuffled.test_seed == 3 and shuffled.name_tag() == '_shuffled_seed3'
    random = ViewProtocol.from_flags(test_sampling='random', test_seed=5, frame_order='reversed')
    assert random.name_tag() == '_random_reversed_seed5'
    assert len({ViewProtocol.from_flags(frame_order=o).name_tag()
                for o in ('forward', 'reversed', 'shuffled')}) == 3
    with pytest.raises(SystemExit):
        test_main.parse_args(['--weights', 'w', '--frame_order', 'backwards'])


def save_order(folder, name, order=None, labels=(0, 1, 2)):
    scores = np.eye(3, dtype=np.float32)[np.asarray(labels)]
    settings = {} if order is None else dict(frame_order=order)
    save_scores(str(folder / name), scores, list(labels), ['x', 'y', 'z'], dataset='synthetic',
                list_file='val.txt', **settings)
    return str(folder / name)


def test_average_scores_never_mixes_frame_orders(tmp_path, capsys):
    """Files of another frame order are refused beside forward ones (given, or in the folder);
    a file without the record (older, the release's) is forward."""
    folder = tmp_path / 'score'
    older = save_order(folder, 'synthetic_a.npz')
    forward = save_order(folder, 'synthetic_b.npz', 'forward')
    combined, _ = average_scores.main([older, forward])
    assert combined.shape == (3, 3)
    reversed_ = save_order(folder, 'synthetic_b_reversed.npz', 'reversed')
    for argv in ([forward, reversed_], ['--score_dir', str(folder)]):
        with pytest.raises(SystemExit) as exit_info:
            average_scores.main(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
        assert 'reversed' in err
    assert 'frames reversed: synthetic_b_reversed.npz]' in err
    average_scores.main([reversed_, save_order(folder, 'synthetic_c_reversed.npz', 'reversed')])


def save_model(path, temporal_type):
    torch.manual_seed(0)
    model = randomize_bn(TemporalModel(8, T, temporal_type, 'resnet10',
                                       input_size=SIZE))
    torch.nn.init.normal_(model.new_fc.weight, 0, 0.5)  # logits of a useful size
    save_checkpoint({'epoch': 1, 'arch': 'resnet10', 'type': temporal_type, 'num_segments': T,
                     'input_size': SIZE, 'best_prec1': 0.0, 'state_dict': model.state_dict()},
                    path)
    return path


def sensitivity(data_root, weights, out, *flags):
    table = test_main.main(['--dataset', 'synthetic', '--dataset_path', data_root,
                            '--weights', weights, '--save_scores', str(out), '-j', '0',
                            '--max_videos', '8', '--temporal_sensitivity', '--json',
                            str(out / 't.json'), *flags])
    assert json.loads((out / 't.json').read_text()) == table
    prefix = os.path.basename(weights).split('.')[0]
    scores = {order: load_scores(str(out / f'synthetic_{prefix}_resnet10_{T}f_1crop_1clip_'
                                          f'{SIZE}px{tag}.npz'))
              for order, tag in (('forward', ''), ('reversed', '_reversed'),
                                 ('shuffled', '_shuffled_seed0'))}
    for order, data in scores.items():
        assert str(data['frame_order']) == order
    return table, scores


@pytest.mark.slow
def test_tsn_is_blind_to_the_order_and_mas_net_is_not(tiny_data_root, tmp_path):
    """TSN averages per-frame scores: reversed and shuffled clips score as the forward ones
    (to float tolerance), no prediction changes. A MAS-Net (random weights) sees the order:
    its scores differ, so the frames were reordered."""
    tsn = save_model(str(tmp_path / 'TSN.pth.tar'), 'TSN')
    table, scores = sensitivity(tiny_data_root, tsn, tmp_path / 'tsn')
    for order in ('reversed', 'shuffled'):
        np.testing.assert_allclose(scores[order]['scores'], scores['forward']['scores'],
                                   rtol=1e-5, atol=1e-5)
        assert table['orders'][order]['changed'] == 0
        assert table['orders'][order]['top1'] == table['orders']['forward']['top1']
    assert table['videos'] == 8 and table['orders']['forward']['twin_videos'] == 8
    assert set(table['pairs']) == {'0/1', '2/3', '4/5', '6/7'}

    mas = save_model(str(tmp_path / 'MASNet.pth.tar'), 'MASNet')
    table, scores = sensitivity(tiny_data_root, mas, tmp_path / 'mas')
    for order in ('reversed', 'shuffled'):
        assert np.abs(scores[order]['scores'] - scores['forward']['scores']).max() > 1e-3


# the smallest recipe found that trains a MAS-Net clearly above chance (12.5%) from scratch:
# 128 training videos of 48 x 36 px, 4 frames of 32 px, 10 epochs (best val top-1 70.8%)
SMALL = dict(train_per_class=16, val_per_class=6, width=48, height=36, min_frames=8,
             max_frames=12)
RECIPE = ['--arch', 'resnet10', '--num_segments', str(T), '--input_size', str(SIZE),
          '--pretrain', 'none', '--batch-size', '16', '--lr', '0.02', '--lr_type', 'cos_lr',
          '--epochs', '10', '--dropout', '0.0', '--weight_decay', '1e-4', '--workers', '0',
          '--seed', '0']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """(dataset_path, checkpoint) of a MAS-Net trained on a small synthetic dataset."""
    import main as train_main
    from ops.synthetic import ensure_synthetic
    tmp = tmp_path_factory.mktemp('trained')
    ensure_synthetic(str(tmp / 'data' / 'synthetic'), **SMALL)
    train_main.main(['--dataset', 'synthetic', '--dataset_path', str(tmp / 'data'), *RECIPE,
                     '--store_name', 'small', '--root_log', str(tmp / 'log'),
                     '--root_checkpoint', str(tmp / 'ckpt')])
    return str(tmp / 'data'), str(tmp / 'ckpt' / 'synthetic' / 'MASNet' / 'resnet10' /
                                  f'num_segments_{T}' / 'small' / 'checkpoint' /
                                  'ckpt.best.pth.tar')


@pytest.mark.slow
def test_trained_mas_net_loses_its_accuracy_on_reversed_clips_and_gives_the_twin(trained,
                                                                                tmp_path):
    data_root, weights = trained
    table = test_main.main(['--dataset', 'synthetic', '--dataset_path', data_root, '--weights',
                            weights, '--save_scores', str(tmp_path), '-j', '0',
                            '--temporal_sensitivity'])
    forward, reversed_ = table['orders']['forward'], table['orders']['reversed']
    assert forward['top1'] >= 50 and forward['twin'] <= 20, table
    assert reversed_['top1'] <= forward['top1'] / 3 and reversed_['changed'] >= 50, table
    assert reversed_['twin'] >= 50 and reversed_['twin_videos'] == 48, table
    assert sum(share >= 75 for share, _ in reversed_['pairs'].values()) >= 2, table
