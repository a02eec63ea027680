"""Errors a user can act on. The CLI prints them as one line and exits with `exit_code`."""


class SlimshipError(Exception):
    """A failure with a one-line message that names the problem and the fix."""

    exit_code = 1


class UsageError(SlimshipError):
    """Bad input from the user: an unknown name, a missing file, an invalid recipe value."""

    exit_code = 2


def unknown(kind: str, name: str, available) -> UsageError:
    """The registry error every lookup uses: what was asked and what exists."""
    return UsageError(f"unknown {kind} {name!r}; available: {', '.join(sorted(available))}")
