"""textjepa: a JEPA-style world model of text and conversation, run as an agent."""

__version__ = "0.1.0"
