"""Turn a user's mistake into one clear line instead of a stack trace."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from vla.limits import LimitsError

USER_ERRORS = (KeyError, ValueError, FileNotFoundError, FileExistsError, LimitsError)


@contextmanager
def user_errors():
    try:
        yield
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
