"""The losses' settings: plain dataclasses, apart from the loss code so that reading or validating a command's
config (textjepa/config.py nests these; the command-line parser is generated from them) never imports torch.

A new world-loss term is a weight in WorldLossConfig here plus its value in WorldLoss.forward
(textjepa/objectives/world_loss.py) and its test in tests/test_objectives.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textjepa.errors import TextJepaError

REGULARIZERS = ("vicreg", "sigreg")


@dataclass
class RegularizerConfig:
    """The anti-collapse term of a loss and its weights."""

    regularizer: str = field(default="vicreg", metadata={"help": "anti-collapse term", "choices": REGULARIZERS})
    var_weight: float = field(default=1.0, metadata={"help": "VICReg variance hinge weight"})
    cov_weight: float = field(default=0.04, metadata={"help": "VICReg off-diagonal covariance weight"})
    sigreg_weight: float = field(default=0.05, metadata={"help": "SIGReg statistic weight"})
    sigreg_projections: int = field(default=64, metadata={"help": "random 1-D projections SIGReg tests"})

    def validate(self) -> None:
        if self.regularizer not in REGULARIZERS:
            raise TextJepaError(f"regularizer must be vicreg or sigreg, got {self.regularizer!r}")
        if self.sigreg_projections < 1:
            raise TextJepaError(f"sigreg_projections must be at least 1, got {self.sigreg_projections}")


@dataclass
class JepaLossConfig:
    """The JEPA loss's settings."""

    regularization: RegularizerConfig = field(
        default_factory=RegularizerConfig, metadata={"help": "the anti-collapse term (see RegularizerConfig)"}
    )

    def validate(self) -> None:
        self.regularization.validate()


@dataclass
class WorldLossConfig:
    """The world loss's term weights."""

    infonce_weight: float = field(default=1.0, metadata={"help": "in-batch next-turn contrast"})
    temperature: float = field(default=0.05, metadata={"help": "InfoNCE temperature"})
    cond_weight: float = field(
        default=1.0,
        metadata={
            "aliases": ("--bridge-weight",),
            "help": "similarity-structure loss of the conditioning head (the vector the text fallback reads; "
            "--bridge-weight: its former name)",
        },
    )
    # InfoNCE of the prediction against the online encoder's own latent of the next turn, so the encoder
    # (and through the EMA the teacher) learns to represent replies, not only contexts.
    reply_contrast_weight: float = field(
        default=1.0, metadata={"help": "InfoNCE against the online encoder's latent of the next turn"}
    )
    # A CPU batch of 64 holds 63 negatives; the queue adds thousands of recent teacher targets for the
    # price of one [batch, queue] matrix product. An entry of the same reply text as a row's own is skipped.
    queue_size: int = field(
        default=0,
        metadata={"help": "queue of this many recent teacher next-turn latents as extra InfoNCE negatives (0: off)"},
    )
    symmetric_infonce: bool = field(
        default=False, metadata={"help": "InfoNCE both ways: each next turn also picks its own prediction"}
    )
    learn_temperature: bool = field(
        default=False,
        metadata={"help": "learn the InfoNCE temperature (log scale, kept within 0.01..1; starts at --temperature)"},
    )
    regularization: RegularizerConfig = field(
        default_factory=RegularizerConfig, metadata={"help": "the anti-collapse term (see RegularizerConfig)"}
    )

    def validate(self) -> None:
        if not self.temperature > 0:
            raise TextJepaError(f"temperature must be positive, got {self.temperature}")
        if self.queue_size < 0:
            raise TextJepaError(f"queue size must be 0 (off) or positive, got {self.queue_size}")
        self.regularization.validate()
