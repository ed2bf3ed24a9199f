"""The sentence-transformers module of an exported textjepa encoder: `SentenceTransformer(DIR)` runs this class.

It holds the checkpoint (and its EMA teacher) copied into the folder, and computes exactly what textjepa's
inference core computes: texts cut and padded under the checkpoint's data contract (a context keeps its last
`max_seq` tokens, a reply or a text line its first), the encoder, its own pooling (lexical or mean), in fp32.
So `SentenceTransformer(DIR).encode(texts)` equals `WorldModel.encode(texts)` (or `Encoder.encode`). It is
textjepa's installed code, not code in the folder, so sentence-transformers asks for `trust_remote_code=True`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from textjepa.inference.encoding import TextEncoder

try:  # sentence-transformers 6
    from sentence_transformers.base.modules.input_module import InputModule
except ImportError:  # sentence-transformers 4 and 5
    from sentence_transformers.models import InputModule

CHECKPOINT_FILE = "textjepa.safetensors"  # its teacher beside it: textjepa_teacher.safetensors
CONFIG_FILE = "textjepa_config.json"
KINDS = ("context", "reply")


class TextJepaEncoder(InputModule):
    """A textjepa checkpoint's encoder as a sentence-transformers input module (tokenizer, encoder, pooling)."""

    config_file_name = CONFIG_FILE
    config_keys = ["kind"]
    save_in_root = True

    def __init__(self, folder: str | Path, kind: str = "context") -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.folder = kind, Path(folder)
        # The reply side is the EMA teacher; fp32, so the vectors are the same on every CPU.
        core = TextEncoder.load(self.folder / CHECKPOINT_FILE, "cpu", teacher=kind == "reply", precision="fp32")
        self.core = core
        self.encoder = core.network  # a submodule, so that .to(device) moves it
        self.tokenizer = core.checkpoint.tokenizer

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        texts = [(prompt or "") + text for text in inputs]
        rows = self.core.checkpoint.data.encode(self.core.checkpoint.tokenizer, texts, self.core.role)
        return {"input_ids": torch.from_numpy(rows.ids), "attention_mask": torch.from_numpy(rows.valid)}

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        ids, valid = features["input_ids"], features["attention_mask"].bool()
        self.core.device = ids.device  # where sentence-transformers put the module and its inputs
        features["sentence_embedding"] = self.core.pool(ids, valid)
        return features

    def get_embedding_dimension(self) -> int:
        return self.core.dim

    get_sentence_embedding_dimension = get_embedding_dimension  # its name before sentence-transformers 6

    @property
    def max_seq_length(self) -> int:
        return self.core.max_seq

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """The folder's checkpoint files are the module's weights: an export already put them there."""
        out = Path(output_path)
        for name in (CHECKPOINT_FILE, CHECKPOINT_FILE.replace(".safetensors", "_teacher.safetensors")):
            if (self.folder / name).resolve() != (out / name).resolve():
                (out / name).write_bytes((self.folder / name).read_bytes())
        (out / CONFIG_FILE).write_text(json.dumps({"kind": self.kind}, indent=2) + "\n")

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> TextJepaEncoder:
        folder = Path(model_name_or_path) / subfolder
        config = json.loads((folder / CONFIG_FILE).read_text())
        return cls(folder, config.get("kind", "context"))
