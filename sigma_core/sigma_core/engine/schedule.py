"""Learning-rate schedule of the published recipe: linear warm-up, then polynomial decay, per iteration.

The schedule is a pure function of the iteration number, so resuming only needs
the iteration (stored in every checkpoint) to continue exactly.
"""
from __future__ import annotations

import torch


class WarmupPolySchedule:
    """lr(i) for iteration i in [0, total_iters).

    Warm-up (i < warmup_iters): linear from ``warmup_start * base_lr`` to ``base_lr``.
    Then: ``base_lr * (1 - (i - warmup_iters) / (total_iters - warmup_iters)) ** power``.
    """

    def __init__(self, base_lr: float, total_iters: int, warmup_iters: int = 0, power: float = 0.9,
                 warmup_start: float = 1e-6):
        if total_iters < 1 or not 0 <= warmup_iters <= total_iters:
            raise ValueError(f"need total_iters >= 1 and 0 <= warmup_iters <= total_iters, "
                             f"got {total_iters}, {warmup_iters}")
        self.base_lr = float(base_lr)
        self.total_iters = int(total_iters)
        self.warmup_iters = int(warmup_iters)
        self.power = float(power)
        self.warmup_start = float(warmup_start)

    def lr_at(self, iteration: int) -> float:
        i = min(max(int(iteration), 0), self.total_iters - 1)
        if i < self.warmup_iters:
            start = self.warmup_start * self.base_lr
            return start + (self.base_lr - start) * i / self.warmup_iters
        progress = (i - self.warmup_iters) / max(self.total_iters - self.warmup_iters, 1)
        return self.base_lr * (1.0 - progress) ** self.power

    def apply(self, optimizer: torch.optim.Optimizer, iteration: int) -> float:
        """Set every parameter group's lr for this iteration; returns it."""
        lr = self.lr_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
