"""Parity: does the exported file, reloaded through its own runtime, compute what the PyTorch
model it came from computes? First structure (finite, shapes, dtypes), then numbers on the real
test split and on random inputs."""

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
        broken.append(f"top-1 agreement {figures['top1_agreement']:.3f} < {tol.min_agreement:g}")
    return broken


def parity(ref_test, out_test, ref_random, out_random, labels, tol: Tolerance) -> dict:
    """The parity block of one file: state `verified` only if every check passed."""
    problems = structural_problems(ref_test, out_test) + structural_problems(ref_random, out_random)
    block = {"tolerance": tol.describe()}
    if not problems:
        block["test_split"] = compare(ref_test, out_test)
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
