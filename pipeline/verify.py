"""Parity: does the exported file, reloaded through its own runtime, compute what the PyTorch
model it came from computes? First structure (finite, shapes, dtypes), then numbers on the real
test split and on random inputs.

Top-1 agreement is judged on the test images whose reference leads by more than two steps of
its own output grid: an int8 output is dequantized onto a grid, one step of rounding in each of
two logits can reverse a two-step lead, and such near-ties flip between two correct files. They
are counted and reported, never hidden. Where fewer than half the images are decided (a weakly
trained model) or the outputs lie on no grid (fp32), agreement is judged on every image."""

from __future__ import annotations

import numpy as np

from targets._base import Tolerance, compare


def structural_problems(reference: np.ndarray, actual: np.ndarray) -> list[str]:
    problems = []
    if actual.shape != reference.shape:
        problems.append(f"output shape {actual.shape} != reference {reference.shape}")
    if actual.dtype != np.float32:
        problems.append(f"output dtype {actual.dtype} != float32")
    if not np.all(np.isfinite(actual)):
        problems.append(f"{int((~np.isfinite(actual)).sum())} non-finite outputs")
    return problems


TIE_STEPS = 2
MIN_DECIDED = 0.5  # below this share of decided images, every image is judged


def output_step(reference: np.ndarray) -> float:
    """The step of the grid the outputs were dequantized onto, counted from the reference's
    own values; 0.0 when they lie on no grid (an fp32 output)."""
    v = np.unique(reference.astype(np.float64))
    if len(v) < 3:
        return 0.0
    span = v[-1] - v[0]
    levels = round(span / np.diff(v).min())
    if not 0 < levels <= 65535:
        return 0.0
    step = span / levels  # the whole span divided, not one float32-rounded gap
    on_grid = np.abs((v - v[0]) / step - np.round((v - v[0]) / step)).max() < 0.05
    return float(step) if on_grid else 0.0


def decided_agreement(reference: np.ndarray, actual: np.ndarray) -> dict:
    """Top-1 agreement on the images whose reference lead exceeds TIE_STEPS output steps, or on
    all of them where too few are (see the module docstring)."""
    step = output_step(reference)
    top2 = np.sort(reference, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > TIE_STEPS * step
    if step == 0.0 or decided.sum() < MIN_DECIDED * len(decided):
        decided[:] = True
    same = reference.argmax(1) == actual.argmax(1)
    return {
        "output_step": step,
        "near_ties": int((~decided).sum()),
        "top1_agreement_all": float(same.mean()),
        "top1_agreement": float(same[decided].mean()),
    }


def judge(figures: dict, tol: Tolerance) -> list[str]:
    """The tolerance lines a comparison breaks (empty: it passes)."""
    broken = []
    if tol.max_abs_rel is not None and figures["max_abs_diff_rel"] > tol.max_abs_rel:
        broken.append(
            f"max |diff| / max |ref| = {figures['max_abs_diff_rel']:.3g} > {tol.max_abs_rel:g}"
        )
    if tol.min_sqnr_db is not None and figures["sqnr_db"] < tol.min_sqnr_db:
        broken.append(f"SQNR {figures['sqnr_db']:.1f} dB < {tol.min_sqnr_db:g} dB")
    if figures["top1_agreement"] < tol.min_agreement:
        ties = figures.get("near_ties")
        broken.append(
            f"top-1 agreement {figures['top1_agreement']:.3f} < {tol.min_agreement:g}"
            + (f" ({ties} near-ties left out)" if ties else "")
        )
    return broken


def parity(ref_test, out_test, ref_random, out_random, labels, tol: Tolerance) -> dict:
    """The parity block of one file: state `verified` only if every check passed."""
    problems = structural_problems(ref_test, out_test) + structural_problems(ref_random, out_random)
    block = {"tolerance": tol.describe()}
    if not problems:
        block["test_split"] = compare(ref_test, out_test) | decided_agreement(ref_test, out_test)
        # random inputs are judged on SQNR/max diff only: argmax of a random input is noise
        block["random_inputs"] = compare(ref_random, out_random)
        block["file_accuracy"] = float((out_test.argmax(1) == labels).mean())
        block["reference_accuracy"] = float((ref_test.argmax(1) == labels).mean())
        problems = [f"test split: {p}" for p in judge(block["test_split"], tol)]
        rand_tol = Tolerance(tol.max_abs_rel, tol.min_sqnr_db, 0.0)
        problems += [f"random inputs: {p}" for p in judge(block["random_inputs"], rand_tol)]
    block["state"] = "failed" if problems else "verified"
    block["problems"] = problems
    return block
