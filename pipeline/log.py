"""Progress and log lines go to stderr, so stdout stays for the summary table."""

import sys
import time

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)
