"""The one exception type for mistakes a user can fix: entry points print it as one line and exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class UserError(Exception):
    """Bad input: the message says what was wrong and what to do."""


class FailedDuringTraining(UserError):
    """A user error met once training had started (a diverged loss, a full disk): unlike a refused start or
    resume, it is recorded in the run's status.json as the run's failure."""


def exit_on_user_error(fn: F) -> F:
    """Turn a UserError into `error: <message>` on stderr and exit status 2; tracebacks stay for bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
