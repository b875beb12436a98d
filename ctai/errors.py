"""Errors ctai reports to the user as one clear line."""


class InputError(Exception):
    """An input that cannot be classified; the message says why, in words a user understands."""
