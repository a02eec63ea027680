"""Named points where a test can kill this process (SIGKILL, no cleanup runs), to prove that
an interrupted run resumes without redoing finished stages or leaving a half-written bundle.

Only active when SLIMSHIP_KILL_AT names the point; costs one environment lookup otherwise.
"""

import os
import signal


def point(name: str) -> None:
    if os.environ.get("SLIMSHIP_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
