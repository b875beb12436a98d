"""Errors ctai reports to the user as one clear line."""


class InputError(Exception):
    """An input that cannot be classified; the message says why, in words a user understands."""


class TransientError(Exception):
    """A failure that may go away by itself (a peer down, HTTP 5xx): the job is retried later."""
