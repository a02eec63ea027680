import numpy as np

from pipeline.verify import compare, parity
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
