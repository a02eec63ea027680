"""Named points where a test can kill this process (SIGKILL, no cleanup runs), to prove that
an interrupted run resumes without redoing finished stages or leaving a half-written bundle.

Only active when SLIMSHIP_KILL_AT names the point; costs one environment lookup otherwise.
`NAME@rankN` kills only the worker whose RANK (set by torchrun) is N, so a test can take one
rank of a distributed run away; a bare NAME kills every process that reaches it.
"""

import os
import signal


def point(name: str) -> None:
    want = os.environ.get("SLIMSHIP_KILL_AT")
    if not want:
        return
    where, _, rank = want.partition("@rank")
    if where == name and (not rank or rank == os.environ.get("RANK", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
