"""Confidence calibration: can an app threshold the softmax? ECE, NLL, Brier and reliability diagrams per
stage, and temperature scaling (Guo, Pleiss, Sun & Weinberger 2017) folded into the classifier.

Conventions (all computed in float64 from the logits):
- probabilities p = softmax(logits), computed via log-softmax (no overflow for large logits);
  confidence = max_k p_k, prediction = argmax_k (the first index on ties).
- ECE: `bins` equal-width confidence bins over [0, 1]; bin b holds confidences in
  (b/B, (b+1)/B] (a confidence on an inner edge goes to the lower bin, as in Guo et al.'s code).
  ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|. Empty bins contribute nothing.
  MCE = max_b over non-empty bins of the same gap.
- NLL: mean over samples of -log p_{label}, in nats.
- Brier: the original multi-class score (Brier 1950): mean over samples of
  sum over classes (p_k - onehot_k)^2; range [0, 2]; not divided by the class count.

Temperature scaling divides every logit by one scalar T > 0 fitted on a split held out from
training (never the test split); it does not change argmax, so accuracy is unchanged. Folding
T into the last nn.Linear (W/T, b/T) makes the model itself emit the scaled logits.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

DEFAULT_BINS = 15
T_BOUNDS = (0.05, 20.0)


# --------------------------------------------------------------------------------------------
# metrics


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"calibration: logits must be (N, K) with one label each, got logits "
            f"{tuple(logits.shape)} and {len(labels)} labels"
        )
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"calibration: labels must be in [0, {logits.shape[1]}), got "
            f"[{labels.min()}, {labels.max()}]"
        )
    if not np.isfinite(logits).all():
        raise ValueError("calibration: logits contain NaN or inf")
    return logits, labels


def bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bin of each confidence: b such that edges[b] < c <= edges[b + 1] (c = 0 goes to bin 0)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)


def metrics(logits: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> dict:
    """ECE, MCE, NLL, Brier and accuracy of `logits` against `labels`, plus the reliability
    diagram (per bin: count, mean confidence, accuracy; None for an empty bin). Plain floats."""
    if bins < 1:
        raise ValueError(f"calibration: bins must be >= 1, got {bins}")
    logits, labels = _check(logits, labels)
    n, k = logits.shape
    logp = _log_softmax(logits)
    p = np.exp(logp)
    conf = p.max(axis=1)
    pred = logp.argmax(axis=1)
    correct = (pred == labels).astype(np.float64)

    idx = bin_index(conf, bins)
    count = np.bincount(idx, minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    corr_sum = np.bincount(idx, weights=correct, minlength=bins)
    nz = count > 0
    mean_conf = np.where(nz, conf_sum / np.maximum(count, 1), np.nan)
    acc = np.where(nz, corr_sum / np.maximum(count, 1), np.nan)
    gap = np.abs(acc - mean_conf)
    ece = float(np.sum(count[nz] / n * gap[nz]))
    mce = float(gap[nz].max())

    nll = float(-logp[np.arange(n), labels].mean())
    onehot = np.zeros_like(p)
    onehot[np.arange(n), labels] = 1.0
    brier = float(((p - onehot) ** 2).sum(axis=1).mean())
    as_list = lambda a: [None if not np.isfinite(v) else float(v) for v in a]
    return {
        "ece": ece,
        "mce": mce,
        "nll": nll,
        "brier": brier,
        "accuracy": float(correct.mean()),
        "mean_confidence": float(conf.mean()),
        "count": int(n),
        "classes": int(k),
        "bins": int(bins),
        "reliability": {
            "edges": [float(e) for e in np.linspace(0.0, 1.0, bins + 1)],
            "count": [int(c) for c in count],
            "confidence": as_list(mean_conf),
            "accuracy": as_list(acc),
        },
    }


UNITS = {
    "ece": lambda m: f"ECE ({m['bins']} equal-width confidence bins)",
    "mce": lambda m: f"MCE ({m['bins']} equal-width confidence bins)",
    "nll": lambda m: "nats per image (mean negative log-likelihood)",
    "brier": lambda m: "Brier (mean over images of the sum over classes of (p - onehot)^2)",
    "accuracy": lambda m: "top1",
}


def figures(m: dict, on: str) -> dict:
    """ECE, MCE, NLL, Brier and accuracy of a `metrics` result as measured figures."""
    from pipeline.report import measured

    return {key: measured(float(m[key]), unit(m), on) for key, unit in UNITS.items()}


RELIABILITY_UNIT = (
    "reliability diagram: equal-width confidence bins (edges), images per bin (count), mean "
    "confidence and top-1 accuracy per bin (None: empty); over all images ECE, MCE, NLL "
    "(nats per image), Brier, accuracy, mean confidence"
)


def reliability_data(m: dict | None, on: str) -> dict | None:
    """A `metrics` result (or {"before": m, "after": m, "temperature": T}) for the reliability
    diagrams, with one source for the whole object: its bins are arrays."""
    if m is None:
        return None
    return {**m, "source": "measured", "unit": RELIABILITY_UNIT, "on": on}


# --------------------------------------------------------------------------------------------
# temperature scaling


def _nll_and_grad(beta: float, z: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """NLL of softmax(beta * z) and its derivative in beta (convex in beta)."""
    logp = _log_softmax(beta * z)
    p = np.exp(logp)
    n = len(labels)
    zy = z[np.arange(n), labels]
    return float(-logp[np.arange(n), labels].mean()), float(((p * z).sum(1) - zy).mean())


def fit_temperature_info(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    bounds: tuple[float, float] = T_BOUNDS,
    cv_folds: int = 5,
) -> dict:
    """Fit T minimising the NLL of softmax(logits / T) on a held-out split, with the evidence.

    With beta = 1/T, NLL(beta) = mean(logsumexp(beta z) - beta z_y) is convex, so its derivative
    is monotone and bisection on log beta finds the minimiser deterministically (to float64
    precision, no step sizes to tune). If the minimiser lies outside `bounds`, T is clipped to
    the bound and `at_bound` says which. One case has no minimiser at all: when every held-out
    image is classified correctly, NLL keeps falling as T -> 0; T is then not identifiable from
    this split and 1.0 (no scaling) is returned with `identifiable: False`.

    `cv` (a diagnostic; it does not change T): `cv_folds`-fold cross-validation inside the
    held-out split, NLL on each held-out fold with T fitted on the other folds versus T = 1.
    On a small split whose few errors decide T (digits: 144 images), the fitted T can fail to
    help out of sample; `cv["scaling_helps"]` says whether it did inside the split, and
    `recommended_temperature` is T where it did (or no CV was possible) and 1.0 where it did not.
    """
    z, y = _check(val_logits, val_labels)
    z = z.astype(np.float64)
    t_lo, t_hi = bounds
    if not 0 < t_lo < 1 < t_hi:
        raise ValueError(
            f"calibration: temperature bounds must satisfy 0 < lo < 1 < hi, got {bounds}"
        )
    nll1, _ = _nll_and_grad(1.0, z, y)
    out = {
        "val_count": len(y),
        "nll_val_before": nll1,
        "bounds": list(bounds),
        "identifiable": True,
        "at_bound": None,
    }
    others = z.copy()
    others[np.arange(len(y)), y] = -np.inf
    if (z[np.arange(len(y)), y] > others.max(1)).all():
        out.update(
            temperature=1.0,
            nll_val_after=nll1,
            identifiable=False,
            recommended_temperature=1.0,
            why="every held-out image is classified correctly: NLL falls without bound "
            "as T -> 0, so T is not identifiable from this split; not scaled",
        )
        return out
    log_beta, out["at_bound"] = _minimise_log_beta(z, y, bounds)
    t = 1.0 / math.exp(log_beta)
    out.update(temperature=t, nll_val_after=_nll_and_grad(1.0 / t, z, y)[0])
    out["recommended_temperature"] = t
    if cv_folds >= 2 and len(y) >= 2 * cv_folds:
        out["cv"] = _cross_validate(z, y, bounds, cv_folds)
        if not out["cv"]["scaling_helps"]:
            out["recommended_temperature"] = 1.0
    return out


def _minimise_log_beta(z, y, bounds) -> tuple[float, str | None]:
    """(log beta minimising the NLL, the bound it was clipped to or None), by bisection."""
    t_lo, t_hi = bounds
    lo, hi = math.log(1 / t_hi), math.log(1 / t_lo)  # log beta
    if _nll_and_grad(math.exp(lo), z, y)[1] >= 0:
        return lo, "upper"  # minimiser at T >= t_hi
    if _nll_and_grad(math.exp(hi), z, y)[1] <= 0:
        return hi, "lower"  # minimiser at T <= t_lo
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _nll_and_grad(math.exp(mid), z, y)[1] > 0:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi), None


def _cross_validate(z, y, bounds, k) -> dict:
    order = np.random.default_rng(0).permutation(len(y))
    scaled = unscaled = 0.0
    temps = []
    for f in range(k):
        held = np.zeros(len(y), bool)
        held[order[f::k]] = True
        t = fit_temperature_info(z[~held], y[~held], bounds, cv_folds=0)["temperature"]
        temps.append(t)
        scaled += _nll_and_grad(1.0 / t, z[held], y[held])[0] * held.sum()
        unscaled += _nll_and_grad(1.0, z[held], y[held])[0] * held.sum()
    return {
        "folds": k,
        "temperatures": temps,
        "nll_scaled": scaled / len(y),
        "nll_unscaled": unscaled / len(y),
        "scaling_helps": bool(scaled < unscaled),
    }


def fit_temperature(val_logits: np.ndarray, val_labels: np.ndarray) -> float:
    """One scalar T > 0 minimising NLL(softmax(val_logits / T)) on a held-out split."""
    return float(fit_temperature_info(val_logits, val_labels)["temperature"])


def evaluate(val_logits, val_labels, test_logits, test_labels, bins: int = DEFAULT_BINS) -> dict:
    """Fit T on the held-out split; metrics on the test split before and after scaling."""
    fit = fit_temperature_info(val_logits, val_labels)
    t = fit["temperature"]
    z, y = _check(test_logits, test_labels)
    z = z.astype(np.float64)
    idx = np.arange(len(y))
    # per-image change of -log p(label): its mean is the NLL change, its spread the noise
    d = _log_softmax(z)[idx, y] - _log_softmax(z / t)[idx, y]
    return {
        "temperature": t,
        "fit": fit,
        "before": metrics(z, y, bins),
        "after": metrics(z / t, y, bins),
        "nll_change": {
            "mean": float(d.mean()),
            "standard_error": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None,
        },
    }


# --------------------------------------------------------------------------------------------
# folding T into the classifier


_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class CannotFold(ValueError):
    """The model's output is not an affine layer's output scaled only by ops that commute with
    a positive scale; the caller ships T as a step for the app instead."""


def output_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The last registered Linear or convolution: the classifier in every model we know of
    (a Linear head, or a 1x1 conv before global pooling as in SqueezeNet)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _AFFINE)]
    if not found:
        raise CannotFold(
            f"fold_temperature: {type(model).__name__} has no Linear or convolution whose "
            "output is the logits"
        )
    return found[-1]


def fold_temperature(model: nn.Module, T: float, example: torch.Tensor | None = None) -> nn.Module:
    """A copy of `model` whose output layer (last Linear or conv) has weight/T and bias/T.

    Dividing an affine layer's weight and bias by T divides its output by T, and pooling,
    flattening, ReLU and other positively homogeneous ops after it keep that scale, so the
    model emits logits / T. The caller's model is not modified. With `example` (only its
    shape is used; the values are seeded random) the copy is run beside the original and must
    emit its output / T, else CannotFold; without it the fold is assumed to scale the output.
    A bias-free layer followed by a bias elsewhere would break this: the check catches it.
    """
    if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
        raise ValueError(f"fold_temperature: T must be a finite number > 0, got {T!r}")
    folded = copy.deepcopy(model).eval()
    if T == 1:
        return folded
    name, _ = output_layer(model)
    layer = dict(folded.named_modules())[name]
    with torch.no_grad():
        layer.weight.copy_((layer.weight.double() / T).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_((layer.bias.double() / T).to(layer.bias.dtype))
    if example is not None:
        _check_fold(model, folded, name, T, example)
    return folded


def _check_fold(model, folded, name, T, example):
    x = torch.randn(
        tuple(example.shape),
        generator=torch.Generator().manual_seed(0),
        dtype=example.dtype if example.is_floating_point() else torch.float32,
    )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out, out_folded = model(x), folded(x)
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out_folded.shape != out.shape:
        raise CannotFold("fold_temperature: the model's output is not one tensor of logits")
    ref = out.double() / T
    err = (out_folded.double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)
    if err > 1e-5:
        raise CannotFold(
            f"fold_temperature: scaling {name!r} ({type(dict(model.named_modules())[name]).__name__})"
            f" by 1/T does not scale the model's output by 1/T (off by {err:.1e} relative): an "
            "op after it does not commute with the scale (softmax, a bias, a normalisation), "
            "or the layer is used more than once"
        )


# --------------------------------------------------------------------------------------------
# reliability diagrams
