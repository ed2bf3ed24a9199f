"""The objectives' settings: the losses' and the JEPA span masking's. Plain dataclasses, apart from the loss code
so that reading or validating a command's config (textjepa/config.py nests these; the command-line parser is
generated from them) never imports torch.

A new world-loss term is a weight in WorldLossConfig here plus its value in WorldLoss.forward
(textjepa/objectives/world_loss.py) and its test in tests/test_objectives.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from textjepa.fields import Checked, setting

REGULARIZERS = ("vicreg", "sigreg")


@dataclass
class MaskingConfig(Checked):
    """Span masking of the JEPA objective (objectives/masking.py)."""

    max_spans: int = setting(4, min=1, help="spans per line")
    max_span_len: int = setting(8, min=1, help="tokens per span")
    max_masked_ratio: float = setting(0.4, above=0, below=1, help="cap on masked share")


@dataclass
class RegularizerConfig(Checked):
    """The anti-collapse term of a loss and its weights."""

    regularizer: str = setting("vicreg", choices=REGULARIZERS, help="anti-collapse term")
    var_weight: float = setting(1.0, help="VICReg variance hinge weight")
    cov_weight: float = setting(0.04, help="VICReg off-diagonal covariance weight")
    sigreg_weight: float = setting(0.05, help="SIGReg statistic weight")
    sigreg_projections: int = setting(64, min=1, help="random 1-D projections SIGReg tests")


@dataclass
class JepaLossConfig(Checked):
    """The JEPA loss's settings."""

    regularization: RegularizerConfig = setting(
        default_factory=RegularizerConfig, help="the anti-collapse term (see RegularizerConfig)"
    )


@dataclass
class WorldLossConfig(Checked):
    """The world loss's term weights."""

    infonce_weight: float = setting(1.0, help="in-batch next-turn contrast")
    temperature: float = setting(0.05, above=0, help="InfoNCE temperature")
    cond_weight: float = setting(
        1.0,
        aliases=("--bridge-weight",),
        help="similarity-structure loss of the conditioning head (the vector the text fallback reads; "
        "--bridge-weight: its former name)",
    )
    # InfoNCE of the prediction against the online encoder's own latent of the next turn, so the encoder
    # (and through the EMA the teacher) learns to represent replies, not only contexts.
    reply_contrast_weight: float = setting(1.0, help="InfoNCE against the online encoder's latent of the next turn")
    # A CPU batch of 64 holds 63 negatives; the queue adds thousands of recent teacher targets for the
    # price of one [batch, queue] matrix product. An entry of the same reply text as a row's own is skipped.
    queue_size: int = setting(
        0, min=0, help="queue of this many recent teacher next-turn latents as extra InfoNCE negatives (0: off)"
    )
    symmetric_infonce: bool = setting(False, help="InfoNCE both ways: each next turn also picks its own prediction")
    learn_temperature: bool = setting(
        False, help="learn the InfoNCE temperature (log scale, kept within 0.01..1; starts at --temperature)"
    )
    regularization: RegularizerConfig = setting(
        default_factory=RegularizerConfig, help="the anti-collapse term (see RegularizerConfig)"
    )
