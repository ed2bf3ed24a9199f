"""textjepa: a JEPA-style world model of text and conversation, run as an agent.

The Python API: `from textjepa import WorldModel, Encoder` (textjepa/api.py). It is imported on first use, so that
`import textjepa` (and the command line's --help) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Encoder", "WorldModel", "__version__"]

if TYPE_CHECKING:
    from textjepa.api import Encoder, WorldModel

_API_NAMES = ("Encoder", "WorldModel")


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from textjepa import api

        return getattr(api, name)
    raise AttributeError(f"module 'textjepa' has no attribute {name!r}")
