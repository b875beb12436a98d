"""Errors ctai reports to the user as one clear line."""


class InputError(Exception):
    """An input that cannot be classified; the message says why, in words a user understands."""


class TransientError(Exception):
    """A failure that may go away by itself (a peer down, HTTP 5xx): the job is retried later."""


class Undeliverable(Exception):
    """The peer refused a message for good (e.g. a SOP class it does not store): the outbox
    keeps it as a dead letter instead of retrying it. Any other exception a sender raises is
    transient."""


class ConfigError(ValueError):
    """A setting that cannot work on this machine (a data folder that cannot be made or written
    to, say), naming the setting and why: the configuration's to fix."""


class TlsError(ConfigError):
    """A certificate, key or CA file that cannot be used, or TLS settings that cannot serve,
    naming the file or setting and why: the configuration's to fix."""
