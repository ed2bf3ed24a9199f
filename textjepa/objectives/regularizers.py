"""Anti-collapse terms: VICReg variance + covariance, and SIGReg (LeJEPA's Epps-Pulley statistic)."""

from __future__ import annotations

import torch

from textjepa.objectives.configs import RegularizerConfig
from textjepa.precision import fp32_function


def regularizer_loss(
    z: torch.Tensor, config: RegularizerConfig, generator: torch.Generator | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted anti-collapse term on rows z [N, D], and its unweighted parts (detached) by name."""
    if config.regularizer == "sigreg":
        value = sigreg(z, config.sigreg_projections, generator)
        return config.sigreg_weight * value, {"sigreg": value.detach()}
    variance, covariance = vicreg_terms(z)
    weighted = config.var_weight * variance + config.cov_weight * covariance
    return weighted, {"variance": variance.detach(), "covariance": covariance.detach()}


@fp32_function
def vicreg_terms(z: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance hinge (std of every dimension towards 1) and off-diagonal covariance, for rows z [N, D]."""
    z = z.float()
    centred = z - z.mean(0)
    n, d = z.shape
    cov = (centred.T @ centred) / max(n - 1, 1)
    # The covariance's diagonal is each dimension's (unbiased) variance: read there rather than from var(0), whose
    # strided reduction and its backward cost more than the covariance's GEMM (3-4 ms of a ~90 ms bf16 training
    # step on an AMX CPU; docs/results.md, issue 23).
    variances = torch.diagonal(cov)
    std = torch.sqrt(variances + eps)
    variance = torch.relu(1.0 - std).mean()
    off_diagonal = cov - torch.diag_embed(variances)
    covariance = off_diagonal.pow(2).sum() / d
    return variance, covariance


@fp32_function
def sigreg(
    z: torch.Tensor, num_projections: int, generator: torch.Generator | None = None, knots: int = 17
) -> torch.Tensor:
    """Epps-Pulley test statistic of random 1-D projections against a standard normal, averaged.

    The empirical characteristic function of each projection is compared with exp(-t^2/2) on a grid,
    weighted by a Gaussian window; zero when the projections look isotropic Gaussian.
    """
    z = z.float()
    n, d = z.shape
    directions = torch.randn(d, num_projections, generator=generator, device="cpu").to(z.device)
    directions = directions / directions.norm(dim=0, keepdim=True)
    projected = z @ directions  # [N, P]
    t = torch.linspace(-5.0, 5.0, knots, device=z.device)
    angles = projected.unsqueeze(-1) * t  # [N, P, K]
    ecf_real, ecf_imag = torch.cos(angles).mean(0), torch.sin(angles).mean(0)
    gaussian = torch.exp(-0.5 * t**2)
    error = (ecf_real - gaussian).pow(2) + ecf_imag.pow(2)
    statistic = torch.trapezoid(error * gaussian, t, dim=-1)  # [P]
    return statistic.mean() * n
