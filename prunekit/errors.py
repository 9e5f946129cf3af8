"""Errors that mean "the user asked for something that cannot be done as asked"."""


class UserError(ValueError):
    """Bad input: the message is one line naming the problem and the fix (CLI exit code 2)."""
