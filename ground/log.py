"""Progress and log lines go to stderr, so stdout stays for the summary table."""

import os
import sys
import time

_T0 = time.perf_counter()


def log(msg: str) -> None:
    # in a distributed run (torchrun sets RANK) only rank 0 speaks; the others do the same work
    if os.environ.get("RANK", "0") != "0":
        return
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)
