"""The one error type for bad input (a file, an option, a run directory).

Every command catches :class:`InputError` (and its subclasses: ``ConfigError``,
``DatasetError``, ``PredictError``, ``JsonlError``, ``TextModelError``, data_prep's
``ConversionError``) and exits with ``error: <message>`` and status 2 (:func:`exit_on_input_error`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad user input; the message names the file, option or field at fault."""


def fail(err: BaseException | str) -> NoReturn:
    """Print ``error: <err>`` to stderr and exit with :data:`EXIT_BAD_INPUT`."""
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def run_command(main: Callable[[], object], *errors: type[BaseException]) -> int:
    """Run a command's body; an :class:`InputError` (or one of `errors`) becomes one
    ``error:`` line on stderr and exit status 2. Returns 0 on success."""
    try:
        main()
    except (InputError, *errors) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
