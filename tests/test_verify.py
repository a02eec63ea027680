import numpy as np

from pipeline.verify import compare, output_step, parity
from targets._base import Tolerance, sqnr_db


def test_sqnr_and_compare_by_hand():
    ref = np.array([[3.0, 4.0]], np.float32)
    assert sqnr_db(ref, ref) == float("inf")
    # signal 25, noise 0.25 -> 20 dB
    assert abs(sqnr_db(ref, ref + np.array([[0.5, 0.0]], np.float32)) - 20.0) < 1e-9
    c = compare(ref, np.array([[3.0, 5.0]], np.float32))
    assert c["max_abs_diff"] == 1.0 and c["max_abs_diff_rel"] == 0.25 and c["top1_agreement"] == 1.0


def test_parity_fails_on_a_wrong_file_and_on_nan():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10)).astype(np.float32)
    y = ref.argmax(1)
    tol = Tolerance(min_sqnr_db=25.0, min_agreement=0.98)
    assert parity(ref, ref + 1e-3, ref, ref, y, tol)["state"] == "verified"
    wrong = parity(ref, ref[:, ::-1].copy(), ref, ref, y, tol)
    assert wrong["state"] == "failed" and any("SQNR" in p for p in wrong["problems"])
    nan = ref.copy()
    nan[0, 0] = np.nan
    assert "non-finite" in parity(ref, nan, ref, ref, y, tol)["problems"][0]


def _on_grid(x: np.ndarray, step: float) -> np.ndarray:
    """Logits as an int8 output gives them: integer levels times one step."""
    return (np.round(x / step) * step).astype(np.float32)


def test_output_step_is_counted_from_an_int8_grid_and_is_zero_for_fp32_outputs():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((200, 10)) * 3
    assert abs(output_step(_on_grid(logits, 0.0585)) - 0.0585) < 1e-6
    assert output_step(logits.astype(np.float32)) == 0.0


def test_near_ties_are_left_out_of_top1_agreement_and_counted():
    step = 0.05
    rng = np.random.default_rng(2)
    levels = np.round(rng.standard_normal((100, 10)) * 60)
    levels[:10, 0] = levels[:10].max(1) + 1  # ten images lead by one step: near-ties
    ref = _on_grid(levels, 1.0) * step
    out = _on_grid(levels - np.eye(10)[0] * 2 * (np.arange(100) < 10)[:, None], 1.0) * step
    tol = Tolerance(min_sqnr_db=25.0, min_agreement=0.98)
    block = parity(ref, out, ref, ref, ref.argmax(1), tol)
    t = block["test_split"]
    assert block["state"] == "verified"
    assert t["near_ties"] >= 10 and t["top1_agreement"] == 1.0 and t["top1_agreement_all"] < 0.98


def test_a_flip_of_a_decided_image_still_fails():
    step = 0.05
    rng = np.random.default_rng(3)
    ref = _on_grid(rng.standard_normal((100, 10)) * 3, step)
    out = ref.copy()
    out[:5] = out[:5, ::-1]  # five clearly decided images answered differently
    block = parity(ref, out, ref, ref, ref.argmax(1), Tolerance(min_agreement=0.98))
    assert block["state"] == "failed" and "top-1 agreement" in block["problems"][0]


def test_a_split_of_mostly_near_ties_is_judged_on_every_image():
    ref = np.zeros((20, 10), np.float32)
    ref[:, 0] = 0.05  # every image leads by one step
    ref[0, 1] = 1.0  # and the grid spans 20 steps
    out = ref.copy()
    out[1:, 1] = 0.1  # all 19 near-ties flip
    t = parity(ref, out, ref, ref, ref.argmax(1), Tolerance(min_agreement=0.98))["test_split"]
    assert t["near_ties"] == 0 and t["top1_agreement"] == t["top1_agreement_all"] == 0.05


def test_constant_outputs_are_no_near_ties():
    ref = np.zeros((20, 10), np.float32)  # a collapsed model: every logit 0
    block = parity(ref, ref.copy(), ref, ref, ref.argmax(1), Tolerance(min_agreement=0.98))
    assert block["state"] == "verified" and block["test_split"]["near_ties"] == 0
