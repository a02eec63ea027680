import math

import torch

from pipeline.distill import kd_loss


def test_kd_loss_matches_a_hand_computed_value():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    T, alpha = 2.0, 0.25
    # by hand: p_t = softmax([0, .5]), p_s = softmax([.5, 0])
    pt = [1 / (1 + math.exp(0.5)), math.exp(0.5) / (1 + math.exp(0.5))]
    ps = [pt[1], pt[0]]
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    ce = -math.log(math.exp(1) / (math.exp(1) + 1))
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert abs(kd_loss(s, t, y, T, alpha).item() - expected) < 1e-6
    # alpha = 0 is plain cross-entropy; equal logits give zero soft loss
    assert abs(kd_loss(s, s, y, T, 1.0).item()) < 1e-7
