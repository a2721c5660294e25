"""The one error convention for bad input (a file, an option, a run directory).

Bad input raises :class:`InputError` or a subclass (``ConfigError``, ``DatasetError``,
``PredictError``, ``JsonlError``, ``TextModelError``, data_prep's ``ConversionError``).
Every command's ``main(argv) -> int`` catches :data:`INPUT_ERRORS`, prints one line
``error: <message>`` on stderr (:func:`report`, no traceback) and returns
:data:`EXIT_BAD_INPUT` (2), which ``sys.exit(main())`` makes the exit status.
"""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad user input; the message names the file, option or field at fault."""


# A missing file is bad input too (a run directory without checkpoint, a missing dataset).
INPUT_ERRORS: tuple[type[Exception], ...] = (InputError, FileNotFoundError)


def report(err: BaseException | str) -> int:
    """Print ``error: <err>`` on stderr; return :data:`EXIT_BAD_INPUT` for ``main``."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_BAD_INPUT
