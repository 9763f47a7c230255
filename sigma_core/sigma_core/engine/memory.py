"""How much memory a training configuration needs, measured before the first iteration.

Training memory peaks either in the backward pass (weights, their gradients and the activations
autograd saved, which grow linearly with batch x crop pixels) or in the optimiser step (weights,
gradients and AdamW's two moments: 16 bytes per float32 parameter). The activations are
measured, not guessed: one forward pass of the model at two small probe sizes, with a
saved-tensors hook summing what autograd keeps, fitted as bytes = fixed + per_pixel * pixels
and scaled to the configured batch and crop. The backward pass needs more than what was saved
(gradients of activations while they are freed): BACKWARD_FACTOR, measured as the peak resident
memory of real training steps over the saved bytes (1.2-1.5 on CPU); test_memory checks it.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

PARAMETER_BYTES = 4  # float32 weights; their gradients take as much
OPTIMISER_BYTES_PER_PARAMETER = 16  # float32 weight, gradient, AdamW exp_avg and exp_avg_sq
BACKWARD_FACTOR = 1.4  # peak during backward / bytes saved by the forward (measured on CPU: 1.30-1.36)
PROBE_SIZES = ((32, 32), (64, 64))  # (H, W); saved bytes are linear in pixels from 32x32 on (measured)
GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training process needs for ``batch`` samples of ``crop`` (H, W)."""

    parameters: int
    fixed_activation_bytes: float  # per sample, independent of the image size
    activation_bytes_per_pixel: float  # per sample and input pixel
    batch: int
    crop: tuple[int, int]

    def activations(self, batch: Optional[int] = None, crop: Optional[tuple[int, int]] = None) -> float:
        b = self.batch if batch is None else batch
        h, w = self.crop if crop is None else crop
        return BACKWARD_FACTOR * b * (self.fixed_activation_bytes + self.activation_bytes_per_pixel * h * w)

    def total(self, batch: Optional[int] = None, crop: Optional[tuple[int, int]] = None) -> float:
        """Peak bytes: the larger of the backward pass and the optimiser step."""
        backward = 2 * PARAMETER_BYTES * self.parameters + self.activations(batch, crop)
        return max(backward, OPTIMISER_BYTES_PER_PARAMETER * self.parameters)

    def largest_batch(self, budget: float) -> int:
        """The largest batch that fits ``budget`` bytes at this crop (0: not even one sample)."""
        if OPTIMISER_BYTES_PER_PARAMETER * self.parameters > budget:
            return 0
        per_sample = self.activations(1)
        room = budget - 2 * PARAMETER_BYTES * self.parameters
        return max(int(room // per_sample), 0) if per_sample > 0 else self.batch

    def largest_crop(self, budget: float, batch: int) -> Optional[tuple[int, int]]:
        """The largest crop of this aspect ratio, sides multiples of 32, that fits ``budget`` with ``batch``."""
        h, w = self.crop
        short = min(h, w)
        for side in range(short - short % 32, 0, -32):
            crop = (max(32, round(h * side / short / 32) * 32), max(32, round(w * side / short / 32) * 32))
            if self.total(batch, crop) <= budget:
                return crop
        return None


def saved_activation_bytes(model: torch.nn.Module, size: tuple[int, int], device: torch.device) -> int:
    """Bytes of the tensors autograd saves for backward in one training-mode forward of one (1, 3, H, W) pair.

    Parameters saved by layers are not counted (they are already in the weights); each storage counts once.
    The torch RNG is forked, so a probe changes no later draw (exact resume stays exact).
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(weakref.ref(t))
        return t

    was_training = model.training
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()
        rgb = torch.zeros(1, 3, *size, device=device)
        out = model(rgb, torch.zeros_like(rgb))
        # What the graph still holds when the forward pass ends (intermediate graphs may have been freed).
        live: dict[int, int] = {}
        for ref in saved:
            t = ref()
            if t is not None and t.untyped_storage().data_ptr() not in params:
                live[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        del out
    model.train(was_training)
    return sum(live.values())


def estimate_training_memory(model: torch.nn.Module, batch: int, crop: tuple[int, int],
                             device: torch.device | str = "cpu") -> MemoryEstimate:
    """MemoryEstimate of training ``model`` with ``batch`` samples of ``crop`` (H, W) per process (float32)."""
    device = torch.device(device)
    (h1, w1), (h2, w2) = PROBE_SIZES
    small = saved_activation_bytes(model, (h1, w1), device)
    large = saved_activation_bytes(model, (h2, w2), device)
    per_pixel = (large - small) / (h2 * w2 - h1 * w1)
    fixed = max(small - per_pixel * h1 * w1, 0.0)
    params = sum(p.numel() for p in model.parameters())
    return MemoryEstimate(params, fixed, per_pixel, batch, (int(crop[0]), int(crop[1])))


def available_memory(device: torch.device | str = "cpu") -> Optional[int]:
    """Bytes a new allocation can use now: free GPU memory, or the host's MemAvailable within any cgroup limit.

    None when it cannot be told (no /proc/meminfo).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    if "MemAvailable" not in fields:
        return None
    available = int(fields["MemAvailable"].split()[0]) * 1024
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def _cgroup_room() -> Optional[int]:
    """Bytes left under this process's cgroup v2 memory limit, if it has one."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        used = int((base / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - used


def memory_warning(estimate: MemoryEstimate, available: Optional[int], processes_per_device: int = 1,
                   headroom: float = 0.9) -> Optional[str]:
    """A warning naming settings that fit when ``estimate`` exceeds ``headroom`` of the available memory
    (shared by ``processes_per_device`` processes); None when it fits or the available memory is unknown."""
    if available is None:
        return None
    budget = headroom * available / max(processes_per_device, 1)
    need = estimate.total()
    if need <= budget:
        return None
    h, w = estimate.crop
    options = []
    batch = estimate.largest_batch(budget)
    if batch >= 1:
        options.append(f"data.batch_size={batch}")
    crop = estimate.largest_crop(budget, estimate.batch)
    if crop is not None:
        options.append(f"data.crop_size=[{crop[0]},{crop[1]}] (batch {estimate.batch})")
    if not options:
        small = estimate.largest_crop(budget, 1)
        if small is not None:
            options.append(f"data.batch_size=1 data.crop_size=[{small[0]},{small[1]}]")
    fit = ("; settings that fit: " + ", or ".join(options)) if options else \
        "; even one 32x32 sample does not fit: choose a smaller model.variant"
    return (f"training needs about {size_text(need)} (batch {estimate.batch} at {h}x{w}: "
            f"{size_text(estimate.activations())} activations, "
            f"{size_text(estimate.parameters * OPTIMISER_BYTES_PER_PARAMETER)} weights and optimiser state) but "
            f"{size_text(available)} {'are' if processes_per_device == 1 else 'is'} available"
            f"{f' for {processes_per_device} processes' if processes_per_device > 1 else ''}; "
            f"the run may be killed for lack of memory{fit}")


def size_text(n: float) -> str:
    """Bytes as GiB with one decimal, or MiB below 1 GiB."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"
