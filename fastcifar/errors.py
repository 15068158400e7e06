"""What can go wrong that the user can fix. The command line turns any `UserError` into one
line on stderr and exit code 2, in one place (`fastcifar.cli.main`); library callers catch
the class they care about."""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, in one line."""


class ConfigError(UserError, ValueError):
    """A setting that cannot work (a recipe field, a runtime choice, a flag)."""


class DataError(UserError, ValueError):
    """Unusable data: the message names the file and what to do about it."""


class PeerError(UserError):
    """A multi-worker peer that never joined, stalled, or was lost mid-run."""


class TrainingDiverged(UserError):
    """The training loss stopped being a finite number (a learning rate too high, ...).
    `history` holds the epochs finished before it; `result`, once a command has added it,
    the failed result that its `--json` gets (`compare` refuses it)."""

    def __init__(self, message: str, step: int = 0, history: list = ()):
        super().__init__(message)
        self.step, self.history = step, list(history)
        self.result = None


def gist(error: BaseException, limit: int = 200) -> str:
    """The one line of an exception that says what went wrong. Keras wraps a layer's error
    in a header ("Exception encountered when calling ...") and ANSI colours; skip both."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.endswith("Error encountered:"):
            return lines[i + 1][:limit]
    return lines[0][:limit] if lines else type(error).__name__
