"""Calibration metrics against hand-computed values, temperature fitting and folding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import confidence as cal
from pipeline.reliability_plot import reliability_png


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models: one thread is faster; restored so that other tests see the default."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# Five images, three classes. The logits are log-probabilities (+ a per-row constant, which
# softmax ignores), so softmax(logits) is exactly the table below.
P = np.array(
    [
        [0.70, 0.20, 0.10],  # label 0: correct, confidence 0.70
        [0.15, 0.55, 0.30],  # label 2: wrong,   confidence 0.55
        [0.20, 0.30, 0.50],  # label 2: correct, confidence 0.50
        [0.05, 0.10, 0.85],  # label 2: correct, confidence 0.85
        [0.90, 0.05, 0.05],  # label 1: wrong,   confidence 0.90
    ]
)
Y = np.array([0, 2, 2, 2, 1])
LOGITS = np.log(P) + np.array([[0.0], [3.0], [-7.0], [100.0], [-50.0]])


def test_hand_computed_accuracy_nll_brier():
    m = cal.metrics(LOGITS, Y, bins=5)
    # accuracy: 3 of 5 correct
    assert m["accuracy"] == pytest.approx(0.6, abs=1e-12)
    # NLL = -(ln 0.70 + ln 0.30 + ln 0.50 + ln 0.85 + ln 0.05) / 5
    #     = -(-0.356675 - 1.203973 - 0.693147 - 0.162519 - 2.995732) / 5 = 5.412046 / 5 = 1.082409
    assert m["nll"] == pytest.approx(1.082409, abs=1e-6)
    # Brier, per image sum over classes of (p - onehot)^2:
    #   0.30^2 + 0.20^2 + 0.10^2        = 0.09   + 0.04   + 0.01   = 0.140
    #   0.15^2 + 0.55^2 + 0.70^2        = 0.0225 + 0.3025 + 0.49   = 0.815
    #   0.20^2 + 0.30^2 + 0.50^2        = 0.04   + 0.09   + 0.25   = 0.380
    #   0.05^2 + 0.10^2 + 0.15^2        = 0.0025 + 0.01   + 0.0225 = 0.035
    #   0.90^2 + 0.95^2 + 0.05^2        = 0.81   + 0.9025 + 0.0025 = 1.715
    #   mean = 3.085 / 5 = 0.617
    assert m["brier"] == pytest.approx(0.617, abs=1e-12)


def test_hand_computed_ece_five_bins():
    m = cal.metrics(LOGITS, Y, bins=5)  # edges 0, .2, .4, .6, .8, 1
    # (0.4, 0.6]: confidences 0.55 (wrong), 0.50 (right): conf 0.525, acc 0.5, gap 0.025, n 2
    # (0.6, 0.8]: 0.70 (right):                           conf 0.70,  acc 1.0, gap 0.300, n 1
    # (0.8, 1.0]: 0.85 (right), 0.90 (wrong):             conf 0.875, acc 0.5, gap 0.375, n 2
    # ECE = 2/5 * 0.025 + 1/5 * 0.3 + 2/5 * 0.375 = 0.01 + 0.06 + 0.15 = 0.22
    assert m["ece"] == pytest.approx(0.22, abs=1e-12)
    # MCE = largest gap = 0.375
    assert m["mce"] == pytest.approx(0.375, abs=1e-12)
    r = m["reliability"]
    assert r["count"] == [0, 0, 2, 1, 2]
    assert r["confidence"][:2] == [None, None]
    assert r["confidence"][2:] == pytest.approx([0.525, 0.70, 0.875], abs=1e-12)
    assert r["accuracy"][2:] == pytest.approx([0.5, 1.0, 0.5], abs=1e-12)


def test_hand_computed_ece_fifteen_bins():
    # with 15 bins (width 1/15) every confidence sits in its own bin, so
    # ECE = mean |correct - confidence| = (0.30 + 0.55 + 0.50 + 0.15 + 0.90) / 5 = 2.4 / 5 = 0.48
    m = cal.metrics(LOGITS, Y)
    assert m["bins"] == 15
    assert m["ece"] == pytest.approx(0.48, abs=1e-12)


def test_bin_edges_go_to_the_lower_bin():
    # two equal logits: confidence exactly 0.5, an inner edge when bins is even
    assert cal.bin_index(np.array([0.5]), 2)[0] == 0  # (0, 0.5]
    assert cal.bin_index(np.array([0.5]), 4)[0] == 1  # (0.25, 0.5]
    assert cal.bin_index(np.array([1.0]), 15)[0] == 14
    assert cal.bin_index(np.array([0.0]), 15)[0] == 0
    m = cal.metrics(np.zeros((4, 2)), np.array([0, 1, 0, 0]), bins=2)
    # all four in bin 0, confidence 0.5; argmax picks class 0 -> 3 of 4 right; ECE = |0.75 - 0.5|
    assert m["reliability"]["count"] == [4, 0]
    assert m["ece"] == pytest.approx(0.25, abs=1e-12)


def test_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    m = cal.metrics(z, np.array([0, 0]))
    # image 2: log p_0 = -1000 exactly (log-softmax), image 1: log p_0 = -log(1 + e^-1000) = 0
    assert m["nll"] == pytest.approx(500.0, rel=1e-12)
    assert m["brier"] == pytest.approx(1.0, abs=1e-12)  # (0 + 0)/2 + (1 + 1)/2


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="labels"):
        cal.metrics(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        cal.metrics(np.array([[np.nan, 0.0]]), np.array([0]))


def _calibrated(n, k=10, seed=0, spread=2.0):
    """Logits whose softmax is the true label distribution: labels are drawn from it."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * spread
    p = np.exp(cal._log_softmax(z))
    y = (rng.random(n)[:, None] > np.cumsum(p, 1)).sum(1)
    return z, np.minimum(y, k - 1)


def test_perfectly_calibrated_data_has_small_ece():
    z, y = _calibrated(20000)
    m = cal.metrics(z, y)
    assert m["ece"] < 0.015
    # temperature scaling leaves calibrated logits alone
    assert cal.fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("t_true", [3.0, 0.5])
def test_fit_recovers_a_known_temperature(t_true):
    z, y = _calibrated(20000, seed=1)
    zv, yv = z[:10000] * t_true, y[:10000]  # over- (T=3) or under-confident (T=0.5)
    zt, yt = z[10000:] * t_true, y[10000:]
    info = cal.fit_temperature_info(zv, yv)
    assert info["temperature"] == pytest.approx(t_true, rel=0.05)
    assert info["nll_val_after"] < info["nll_val_before"]
    # on the other half (the "test split") scaling lowers NLL and ECE, accuracy unchanged
    ev = cal.evaluate(zv, yv, zt, yt)
    assert ev["after"]["nll"] < ev["before"]["nll"]
    assert ev["after"]["ece"] < ev["before"]["ece"]
    assert ev["after"]["accuracy"] == ev["before"]["accuracy"]
    ch = ev["nll_change"]
    assert ch["mean"] == pytest.approx(ev["after"]["nll"] - ev["before"]["nll"], abs=1e-9)
    assert ch["mean"] < -3 * ch["standard_error"]
    assert info["cv"]["scaling_helps"] and info["cv"]["folds"] == 5
    assert info["recommended_temperature"] == info["temperature"]
    # deterministic
    assert cal.fit_temperature(zv, yv) == cal.fit_temperature(zv, yv)


def test_fit_is_the_nll_minimum():
    z, y = _calibrated(3000, seed=2)
    z = z * 2.0
    t = cal.fit_temperature(z, y)
    nll = lambda s: cal.metrics(z / s, y)["nll"]
    assert nll(t) <= min(nll(t * 0.99), nll(t * 1.01), nll(1.0))


def test_perfectly_separated_split_is_not_scaled():
    z = np.array([[5.0, 0.0], [0.0, 3.0], [2.0, 1.0]])
    info = cal.fit_temperature_info(z, np.array([0, 1, 0]))
    assert info["temperature"] == 1.0 and info["identifiable"] is False


def test_figures_are_measured():
    f = cal.figures(cal.metrics(LOGITS, Y), on="distilled, 5 test images")
    assert set(f) == {"ece", "mce", "nll", "brier", "accuracy"}
    assert all(v["source"] == "measured" for v in f.values())
    assert "15 equal-width" in f["ece"]["unit"]


def _models():
    from models import create_model

    torch.manual_seed(0)
    return [
        ("small_cnn", create_model("small_cnn", 1, 10, 8), torch.zeros(1, 1, 8, 8)),
        ("resnet20", create_model("resnet20", 3, 10, 32), torch.zeros(1, 3, 16, 16)),
        (
            "mobilenetv3_small",
            create_model("mobilenetv3_small", 3, 10, 32),
            torch.zeros(1, 3, 16, 16),
        ),
    ]


@pytest.mark.parametrize("i", range(3))
def test_folding_equals_scaling(i):
    name, model, example = _models()[i]
    model.eval()
    # BatchNorm statistics away from the identity so the outputs are not trivial
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(8, *example.shape[1:], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for t in (2.7, 0.6):
        folded = cal.fold_temperature(model, t, example)
        with torch.no_grad():
            after = folded(x)
        # float32: W/T is rounded once, then the matmul rounds as before: the difference is a
        # few ulp of the logits (measured up to 6.2e-7 of max |logit| on resnet20), so the
        # bound is relative, 2e-6 (~16 ulp) for margin across CPUs; in float64 the same fold is
        # exact to 1e-6 absolute (measured <= 4e-15)
        assert (after - before / t).abs().max().item() <= 2e-6 * before.abs().max().item() / t, name
        m64, f64 = model.double(), cal.fold_temperature(model.double(), t, example.double())
        with torch.no_grad():
            assert (f64(x.double()) - m64(x.double()) / t).abs().max().item() < 1e-6, name
        model.float()
    # the caller's model is untouched
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_folding_scales_a_1x1_conv_classifier_before_global_pooling():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
    ).eval()
    x = torch.randn(4, 3, 8, 8)
    folded = cal.fold_temperature(model, 2.5, x[:1])
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x) / 2.5, rtol=1e-5, atol=1e-6)
    assert cal.output_layer(model)[0] == "2"


def test_folding_refuses_what_it_cannot_scale():
    with pytest.raises(cal.CannotFold, match="no Linear or convolution"):
        cal.fold_temperature(nn.Sequential(nn.Flatten(), nn.Softmax(dim=1)), 2.0)
    softmaxed = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.Softmax(dim=1))
    with pytest.raises(cal.CannotFold, match="does not commute"):
        cal.fold_temperature(softmaxed, 2.0, torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="T must be"):
        cal.fold_temperature(nn.Linear(2, 2), 0.0)
    with pytest.raises(ValueError, match="T must be"):
        cal.fold_temperature(nn.Linear(2, 2), math.inf)


def test_reliability_png():
    z, y = _calibrated(2000, seed=4)
    per_stage = {"teacher": cal.metrics(z * 2, y), "distilled": cal.evaluate(z * 2, y, z * 2, y)}
    png = reliability_png(per_stage, title="test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
