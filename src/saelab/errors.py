"""User-facing errors: one line that names the field and the value."""


class SaelabError(Exception):
    """An error caused by user input; the CLI prints its message on one line and exits 2."""

    def __init__(self, message: str):
        super().__init__(message)


class ConfigError(SaelabError):
    """A configuration field holds an invalid value."""

    def __init__(self, field: str, value, reason: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r}: {reason}")


class DataError(SaelabError):
    """An activation file is unreadable, empty, mis-shaped or holds non-finite values."""
