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


def short(value, limit: int = 60) -> str:
    """A value as an error line may show it: its repr (a string as is), cut to `limit`."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
