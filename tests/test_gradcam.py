"""Grad-CAM: follows a moving object for a model built to detect it; CAM.py writes its figure."""
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

import CAM
from ops.checkpoint import save_checkpoint
from ops.gradcam import grad_cam, overlay
from ops.models import TemporalModel
from ops.transforms import IMAGENET_MEAN, IMAGENET_STD


def red_detector(num_segments=4):
    """A MAS-ResNet-10 wired by hand so that class 0's score is the mean 'redness' of the clip.

    Channel 0 of the stem computes red - green (3x3 box); in every stride-2 block the residual
    branch carries channel 0 on through a 3x3 box filter (MSM halves it, TIM is the identity);
    all other weights are zero and BatchNorm is the identity; new_fc reads channel 0.
    """
    model = TemporalModel(2, num_segments, 'MASNet', 'resnet10', dropout=0, partial_bn=False,
                          input_size=64).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.weight.fill_(1)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1)
        net = model.base_model
        net.conv1.weight[0, 0, 2:5, 2:5] = 1.0 / 9
        net.conv1.weight[0, 1, 2:5, 2:5] = -1.0 / 9
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            layer[0].TIM.conv.weight[:, 0, 1] = 1.0
        for layer in (net.layer2, net.layer3, net.layer4):
            layer[0].conv1.weight[0, 0] = 1.0 / 9
            layer[0].conv2.weight[0, 0, 1, 1] = 1.0
        model.new_fc.weight[0, 0] = 1.0
    return model


def moving_square_clip(T=4, size=128, side=24):
    """Normalised clip of a red square moving left to right over a grey textured background."""
    rng = np.random.RandomState(0)
    background = cv2.resize(rng.uniform(90, 160, (4, 4)).astype(np.float32), (size, size))
    frames, boxes = [], []
    for t in range(T):
        img = np.repeat(background[:, :, None], 3, axis=2).astype(np.uint8)
        x = 4 + t * (size - side - 8) // (T - 1)
        y = 52
        img[y:y + side, x:x + side] = (230, 30, 30)
        frames.append(img)
        boxes.append((x, y))
    clip = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((clip - mean) / std).reshape(1, -1, size, size), boxes, side


@pytest.mark.slow
def test_grad_cam_follows_the_moving_object():
    model = red_detector()
    clip, boxes, side = moving_square_clip()
    cams, probabilities, target = grad_cam(model, clip, target_class=0)
    assert cams.shape == (4, 128, 128) and target == 0
    assert cams.max() == pytest.approx(1.0) and cams.min() == pytest.approx(0.0)
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    for t, (x, y) in enumerate(boxes):
        inside = np.zeros((128, 128), bool)
        inside[y:y + side, x:x + side] = True
        assert cams[t][inside].mean() > 2 * cams[t][~inside].mean()
        peak_y, peak_x = np.unravel_index(cams[t].argmax(), cams[t].shape)
        assert x - side <= peak_x <= x + 2 * side and y - side <= peak_y <= y + 2 * side
    # the peak moves with the object
    peaks = [np.unravel_index(c.argmax(), c.shape)[1] for c in cams]
    assert peaks == sorted(peaks) and peaks[-1] - peaks[0] > 40


def test_overlay_blends_heat_over_frame():
    frame = np.full((4, 4, 3), 100, np.uint8)
    cam = np.zeros((4, 4))
    cam[0, 0] = 1.0
    out = overlay(frame, cam)
    assert out[0, 0, 0] > out[3, 3, 0]  # hot = red in jet
    assert out[3, 3, 2] > out[0, 0, 2]  # cold = blue


@pytest.mark.slow
def test_cam_cli_on_video_id_and_folder(tiny_data_root, tmp_path):
    torch.manual_seed(0)
    model = TemporalModel(8, 4, 'MASNet', 'resnet10', input_size=64)
    weights = str(tmp_path / 'w.pth.tar')
    save_checkpoint({'epoch': 1, 'arch': 'resnet10', 'type': 'MASNet', 'num_segments': 4,
                     'input_size': 64, 'best_prec1': 0.0, 'state_dict': model.state_dict()},
                    weights)
    out = str(tmp_path / 'cam.png')
    data = ['--dataset', 'synthetic', '--dataset_path', tiny_data_root]  # the file names no class
    cams, probabilities, target = CAM.main([*data, '--weights', weights,
                                            '--output', out])
    assert os.path.getsize(out) > 10000 and cams.shape == (4, 64, 64)
    assert target == int(probabilities.argmax())

    video_id = open(os.path.join(tiny_data_root, 'synthetic', 'valid.txt')).readline().split()[0]
    folder = os.path.join(tiny_data_root, 'synthetic', 'frames', video_id)
    results = []
    for video in (video_id, folder):
        out2 = str(tmp_path / 'cam2.png')
        results.append(CAM.main([*data, '--weights', weights,
                                 '--video', video, '--target_class', '3', '--output', out2]))
        assert cv2.imread(out2) is not None
        os.remove(out2)
    (cams_id, probs_id, target_id), (cams_dir, probs_dir, target_dir) = results
    assert target_id == target_dir == 3
    np.testing.assert_allclose(probs_id, probs_dir, rtol=1e-6)  # same video, two ways to name it
    np.testing.assert_allclose(cams_id, cams_dir, rtol=1e-5, atol=1e-6)
    assert np.ptp(cams_id) > 0  # a map, not a constant
    with pytest.raises(SystemExit):
        CAM.main([*data, '--weights', weights, '--video', 'nope'])
