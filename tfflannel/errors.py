"""The project's own error types: bad input the user can fix, as opposed to bugs.

The CLI turns an `InputError` (and a missing or clashing file) into a one-line
message and exit code 2; every other exception keeps its traceback, because it
is a bug. Both derive from `ValueError`, so library callers that catch
`ValueError` keep working.
"""


class InputError(ValueError):
    """Bad input: a file, an option or a config value the user gave; the message names it and the fix.

    The CLI reports it without a traceback and exits with code 2.
    """


class ConfigError(InputError):
    """A config file or `--set` value that is malformed, unknown or out of range."""
