"""A pretrained-backbone checkpoint as a plain sentence-transformers folder: models.Transformer and Pooling, no
custom code, so `SentenceTransformer(DIR)` loads it without textjepa and without trust_remote_code.

A BERT backbone's checkpoint computes exactly what a plain sentence-transformers model of it computes, once the
folder says the data contract's rules in sentence-transformers' own terms:
- the tokenizer is the checkpoint's (the backbone's, lower-casing included), framing a text as [CLS] text [SEP];
- the cut is max_seq text tokens, so max_seq_length is max_seq + 2 ([CLS] and [SEP] are kept either way), and
  a context keeps its LAST tokens: its tokenizer truncates on the left (a reply or a text line on the right);
- pooling is the backbone's own (the mean over [CLS], the text and [SEP], or [CLS]), with no Normalize module
  even where the backbone had one: WorldModel.encode returns the pooled latent unnormalised (the checkpoint
  records the backbone's Normalize but never applies it), and the export must give the same vectors.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from textjepa.checkpoint import Checkpoint
from textjepa.data.contract import KEEPS_LAST, Field
from textjepa.models.backbone import BackboneSpec, PretrainedEncoder, build_encoder


def write_plain_folder(checkpoint: Checkpoint, weights: Checkpoint, role: Field, folder: Path) -> None:
    """Writes into `folder` the sentence-transformers model of `checkpoint`'s backbone with the encoder weights of
    `weights` (the checkpoint itself, or its teacher for the reply side), reading texts of `role`."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the modules; 3-5 have them here only
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    encoder = build_encoder(checkpoint.config)
    assert isinstance(encoder, PretrainedEncoder), "a scratch checkpoint is exported with its own module"
    encoder.load_state_dict(weights.module_state("encoder"))
    spec, max_seq = encoder.spec, checkpoint.config.max_seq
    # Built from a staging copy of the Hugging Face model, then saved by sentence-transformers as its own folder.
    with tempfile.TemporaryDirectory(prefix=".hf-", dir=folder) as staging, quiet_transformers():
        encoder.model.save_pretrained(staging)
        backbone_tokenizer(checkpoint, spec, role, max_seq + 2).save_pretrained(staging)
        transformer = Transformer(staging, max_seq_length=max_seq + 2)
        without_pooler_weights(transformer.model)
        model = SentenceTransformer(modules=[transformer, Pooling(spec.dim, spec.pooling)], device="cpu")
        model.save(str(folder))


def without_pooler_weights(model: torch.nn.Module) -> None:
    """BertModel's pooler, which sentence-transformers loads but never runs (it pools the token latents), and
    which textjepa's backbone does not have: zeros, so the folder is the same on every export and nobody takes
    the pooler for trained weights."""
    pooler = getattr(model, "pooler", None)
    if pooler is not None:
        with torch.no_grad():
            for parameter in pooler.parameters():
                parameter.zero_()


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Staging reloads a BertModel without its pooler; transformers' report of the missing pooler is noise here."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def backbone_tokenizer(checkpoint: Checkpoint, spec: BackboneSpec, role: Field, max_length: int):
    """The checkpoint's tokenizer as a transformers tokenizer that cuts as the data contract does for `role`."""
    from transformers import PreTrainedTokenizerFast

    vocab = checkpoint.tokenizer
    return PreTrainedTokenizerFast(
        tokenizer_object=vocab,
        cls_token=vocab.id_to_token(spec.cls_id),
        sep_token=vocab.id_to_token(spec.sep_id),
        mask_token=vocab.id_to_token(spec.mask_id),
        pad_token=vocab.id_to_token(spec.pad_id),
        unk_token=getattr(vocab.model, "unk_token", None),
        model_max_length=max_length,
        truncation_side="left" if role in KEEPS_LAST else "right",
    )
