"""The one exception type that means "the user gave us something we cannot use"."""


class TextJepaError(Exception):
    """A problem with input, arguments or files. The CLI prints it as one line and exits non-zero."""
