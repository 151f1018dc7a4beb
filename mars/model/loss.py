"""The Bradley–Terry loss of a batch of pairs."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, target_margin: float | torch.Tensor = 0.0,
                       center_rewards_coef: float = 0.0) -> torch.Tensor:
    """−log σ(Δ − m), averaged over pairs, plus c·mean((r⁺ + r⁻)²) to keep rewards centred.

    >>> round(bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item(), 4)  # log 2
    0.6931
    """
    loss = -F.logsigmoid(r_chosen - r_rejected - target_margin).mean()
    if center_rewards_coef:
        loss = loss + center_rewards_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss
