"""The exception types the CLI reports as one line: a user mistake, and a run stopped on request."""


class TextJepaError(Exception):
    """A problem with input, arguments or files. The CLI prints it as one line and exits non-zero."""


class Interrupted(TextJepaError):
    """A run stopped by SIGINT/SIGTERM after saving what it needs to continue; the message says where."""
