"""Progress and log lines go to stderr, so stdout stays for the summary table; `guarded`
turns a failed measurement into a logged line and an {"error": ...} figure."""

import os
import sys
import time

_T0 = time.perf_counter()


def log(msg: str) -> None:
    # in a distributed run (torchrun sets RANK) only rank 0 speaks; the others do the same work
    if os.environ.get("RANK", "0") != "0":
        return
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def guarded(fn) -> dict:
    """A profiling extra that fails is reported with its error, not raised: the file itself
    was already verified, and the report says what could not be measured."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        log(f"[profile] not measured: {msg}")
        return {"error": msg}
