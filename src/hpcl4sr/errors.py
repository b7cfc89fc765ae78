"""The one error type the CLI turns into a one-line message."""


class UserError(Exception):
    """Bad input from the user: a missing file, a missing column, an unknown option.

    The message names the file, the line or column, and what was expected; the CLI prints it on one
    line and exits with status 2, leaving no partial output behind.
    """
