"""User-facing errors: the CLI prints these as one line, without a traceback."""


class UserError(Exception):
    """A mistake in the user's input (file, flag, data). The message names what is wrong and where."""
