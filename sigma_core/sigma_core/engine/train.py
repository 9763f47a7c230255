"""The training loop: the published recipe, exact resume, AMP, DistributedDataParallel via torchrun.

Resume is exact at epoch boundaries: an ``epoch_NNNN.pt`` checkpoint (our
self-describing format, loadable by the node) has an ``epoch_NNNN.state.pt``
beside it with the optimiser, the AMP scaler, the epoch/iteration, the best
mIoU so far and every process's RNG states. The data order comes from a
DistributedSampler whose state is (seed, epoch), the augmentations from RNGs
the dataset derives from (seed, epoch, index), DataLoader worker seeds from a
generator re-seeded per epoch, and drop-path draws from the restored torch RNG.
So a run killed after epoch e and resumed from its checkpoint produces the same
losses as an uninterrupted run (bit for bit on CPU with ``train.deterministic``).

Under ``torchrun`` (env WORLD_SIZE > 1) each process trains on its shard
(NCCL on GPUs, gloo on CPU); rank 0 evaluates, logs and writes checkpoints.
"""
from __future__ import annotations

import csv
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..config import SigmaConfig
from ..data.transforms import IGNORE_INDEX
from ..files import atomic_torch_save, atomic_write_text
from ..inference import resolve_device
from .config import TrainConfig
from .evaluate import EvalSettings, blank_modality_like, evaluate_dataset, unpack_batch
from .metrics import SegmentationMetrics
from .schedule import WarmupPolySchedule

CHECKPOINT_RE = re.compile(r"^epoch_(\d{4,})\.pt$")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass
class TrainResult:
    """What a run did: per-iteration losses of this process's run, metrics per evaluated epoch, files."""

    out_dir: Path
    losses: list[float]
    epochs_run: list[int]
    evaluations: dict[int, SegmentationMetrics]
    best_miou: Optional[float]
    last_checkpoint: Optional[Path]
    best_checkpoint: Optional[Path]
    seconds: float


def setup_distributed(device: str) -> DistContext:
    """Read torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK); init the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        dev = resolve_device(device)
    except ValueError as e:
        raise RuntimeError(f"train.device: {e}") from None
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the augmentation/dropout RNGs for one epoch on one process."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**31 - 1)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # DataLoader seeds each worker's torch RNG from the loader's generator; derive numpy/random from it.
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG state as plain tensors/lists (loadable with torch.load(weights_only=True))."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def drop_modality(x: torch.Tensor, probability: float) -> torch.Tensor:
    """(B, 3, H, W) normalised modality input -> the same with each sample blanked (all-zero image) with
    ``probability``; draws from the torch RNG (restored on resume)."""
    if probability <= 0.0:
        return x
    drop = torch.rand(x.shape[0], device=x.device) < probability
    if not bool(drop.any()):
        return x
    return torch.where(drop.view(-1, 1, 1, 1), blank_modality_like(x), x)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices/kernels only; none on biases, norms, scales and SSM A/D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim <= 1 or leaf.startswith(("A_log", "Ds", "D_")) or leaf in ("D", "A_logs"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def state_path_for(checkpoint: Path) -> Path:
    """The training-state file beside a resumable checkpoint: epoch_0003.pt -> epoch_0003.state.pt."""
    return Path(checkpoint).with_suffix(".state.pt")


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete resumable checkpoints (epoch_NNNN.pt with its .state.pt) in out_dir as (epoch, path), oldest first."""
    found = []
    for p in Path(out_dir).glob("epoch_*.pt"):
        m = CHECKPOINT_RE.match(p.name)
        if m and state_path_for(p).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(out_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` resumable checkpoints (and their state files)."""
    found = list_checkpoints(out_dir)
    doomed = [p for _, p in found[: max(len(found) - keep_last, 0)]]
    for p in doomed:
        p.unlink(missing_ok=True)
        state_path_for(p).unlink(missing_ok=True)
    return doomed


class CsvLog:
    """Append-only CSV with a header; on resume, rows past the resume point are dropped first."""

    def __init__(self, path: Path, columns: list[str], truncate_after: Optional[tuple[str, int]] = None,
                 fresh: bool = False):
        self.path = Path(path)
        self.columns = columns
        rows: list[dict[str, str]] = []
        if self.path.exists() and not fresh:
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            if truncate_after is not None:
                key, limit = truncate_after
                rows = [r for r in rows if r.get(key, "") != "" and int(float(r[key])) <= limit]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(row)


@dataclass(frozen=True)
class DatasetInfo:
    """What a checkpoint records about the data: class names, palette, modality scaling."""

    class_names: tuple[str, ...]
    palette: list[list[int]]
    scaling: Any  # sigma_core.data.modality.ModalityScaling


def make_dataset(data: Any, split: str, train: bool, seed: int = 0):
    """An RGBXDataset for the ``data`` config section: training augmentations when ``train``."""
    from ..data.dataset import RGBXDataset
    from ..data.transforms import TrainAugmentation

    if not data.root:
        raise ValueError("data.root is not set: give the dataset folder, e.g. data.root=datasets/MFNet")
    transform = None
    if train:
        crop = tuple(data.crop_size) if data.crop_size is not None else None
        transform = TrainAugmentation(crop_size=crop, scales=tuple(data.scales), flip=data.flip)
    dataset = RGBXDataset(data.root, split=split, preset=data.preset, transform=transform, seed=seed)
    if dataset.spec.classes is None:
        raise ValueError(f"{data.root}: the dataset names no classes; add 'classes: [...]' to its dataset.yaml")
    return dataset


def dataset_info(ds) -> DatasetInfo:
    """DatasetInfo of an RGBXDataset (or a Subset of one)."""
    from ..checkpoints import default_palette

    base = ds.dataset if isinstance(ds, Subset) else ds
    spec = base.spec
    palette = [list(c) for c in spec.palette] if spec.palette is not None else default_palette(len(spec.classes))
    return DatasetInfo(tuple(spec.classes), palette, spec.scaling)


def build_datasets(cfg: TrainConfig):
    """(train dataset, validation dataset) for the ``data`` section; ``data.limit``/``eval.limit`` take the first N."""
    train_ds = make_dataset(cfg.data, cfg.data.train_split, train=True, seed=cfg.train.seed)
    val_ds = make_dataset(cfg.data, cfg.data.val_split, train=False)
    if cfg.data.limit is not None:
        train_ds = Subset(train_ds, range(min(cfg.data.limit, len(train_ds))))
    if cfg.eval.limit is not None:
        val_ds = Subset(val_ds, range(min(cfg.eval.limit, len(val_ds))))
    return train_ds, val_ds


def model_config(cfg: TrainConfig, num_classes: int) -> SigmaConfig:
    """The SigmaConfig of the ``model`` section with the dataset's class count (validated by SigmaConfig)."""
    m = cfg.model
    kwargs: dict[str, Any] = {"variant": m.variant, "num_classes": num_classes, "scan_backend": m.scan_backend}
    for name in ("depths", "dims", "decoder_depths", "drop_path_rate"):
        value = getattr(m, name)
        if value is not None:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return SigmaConfig(**kwargs)


def initialise_from(model: torch.nn.Module, path: str) -> Any:
    """Load a VMamba ImageNet or Sigma checkpoint; a class head of another size keeps its initialisation."""
    from ..checkpoints import load_weights

    return load_weights(model, path, allow_new_classes=True)


def write_checkpoint(path: Path, model: torch.nn.Module, info: Any, extra: dict[str, Any]) -> None:
    """Our self-describing checkpoint (the node loads it directly); ``extra`` is plain data."""
    from ..checkpoints import save_checkpoint

    save_checkpoint(path, model, model.config, class_names=list(info.class_names), modality=info.scaling.modality,
                    palette=info.palette, scaling=info.scaling, extra=extra)


def read_training_state(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load the weights of the resumable checkpoint ``path`` into ``model``; return its training state."""
    from ..checkpoints import load_weights

    path = Path(path)
    state_file = state_path_for(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    if not state_file.is_file():
        raise ValueError(f"{path} has no training state beside it ({state_file.name} is missing): resume from an "
                         "epoch_NNNN.pt written by sigma-train, or start from it with model.init=...")
    load_weights(model, path, strict=True)
    return torch.load(state_file, map_location="cpu", weights_only=True)


def train(cfg: TrainConfig) -> TrainResult:
    """Train as configured; returns a TrainResult. Raises ValueError on configuration problems."""
    started = time.perf_counter()
    ctx = setup_distributed(cfg.train.device)
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_all(epoch_seed(cfg.train.seed, 0, ctx.rank))  # drop-path draws; augmentations have their own seeds
    out_dir = Path(cfg.train.out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())

    train_ds, val_ds = build_datasets(cfg)
    info = dataset_info(train_ds)
    num_classes = len(info.class_names)
    from ..models.sigma import build_sigma

    model = build_sigma(model_config(cfg, num_classes)).to(ctx.device)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    use_amp = cfg.train.amp and ctx.device.type == "cuda"
    amp_dtype = torch.float16 if cfg.train.amp_dtype == "float16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    loader_generator = torch.Generator()
    loader = DataLoader(train_ds, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.num_workers, worker_init_fn=_worker_init, generator=loader_generator,
                        pin_memory=ctx.device.type == "cuda", persistent_workers=False)
    iters_per_epoch = len(loader)
    if iters_per_epoch == 0:
        raise ValueError(f"data: {len(train_ds)} training samples are fewer than one batch "
                         f"(data.batch_size={cfg.data.batch_size} x {ctx.world_size} processes)")
    schedule = WarmupPolySchedule(cfg.optim.lr, cfg.schedule.epochs * iters_per_epoch,
                                  cfg.schedule.warmup_epochs * iters_per_epoch, cfg.schedule.power,
                                  cfg.schedule.warmup_start)

    start_epoch, iteration, best_miou = 0, 0, None
    resume = cfg.train.resume
    if resume == "auto":
        found = list_checkpoints(out_dir)
        resume = str(found[-1][1]) if found else None
    if resume:
        state = read_training_state(Path(resume), model)
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, iteration, best_miou = state["epoch"], state["iteration"], state.get("best_miou")
        if state.get("iters_per_epoch") not in (None, iters_per_epoch):
            raise ValueError(f"{resume}: saved with {state['iters_per_epoch']} iterations per epoch, now "
                             f"{iters_per_epoch}; resume with the same data, batch size and process count")
        set_rng_state(state["rng"][min(ctx.rank, len(state["rng"]) - 1)])
    elif cfg.model.init:
        report = initialise_from(model, cfg.model.init)
        if ctx.is_main:
            print(f"initialised from {cfg.model.init}: {report}")

    net: torch.nn.Module = model
    if ctx.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    eval_settings = EvalSettings.from_section(cfg.eval, cfg.data.crop_size)

    iter_log = epoch_log = writer = None
    if ctx.is_main:
        fresh = not resume
        iter_log = CsvLog(out_dir / "train_log.csv", ["epoch", "iteration", "loss", "lr"],
                          truncate_after=("iteration", iteration), fresh=fresh)
        epoch_log = CsvLog(out_dir / "epochs.csv", ["epoch", "iteration", "mean_loss", "seconds", "miou",
                                                    "pixel_accuracy", "checkpoint"],
                           truncate_after=("epoch", start_epoch), fresh=fresh)
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=iteration)

    result = TrainResult(out_dir, [], [], {}, best_miou, None, None, 0.0)
    for epoch in range(start_epoch, cfg.schedule.epochs):
        sampler.set_epoch(epoch)
        (train_ds.dataset if isinstance(train_ds, Subset) else train_ds).set_epoch(epoch)  # augmentation seeds
        loader_generator.manual_seed(epoch_seed(cfg.train.seed, epoch, 0))
        net.train()
        epoch_start, epoch_losses = time.perf_counter(), []
        bar = None
        if ctx.is_main and cfg.train.progress:
            from tqdm import tqdm

            bar = tqdm(total=iters_per_epoch, desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}", dynamic_ncols=True,
                       leave=False)
        for batch in loader:
            rgb, x, label = (t.to(ctx.device, non_blocking=True) for t in unpack_batch(batch))
            x = drop_modality(x, cfg.data.modality_dropout)
            lr = schedule.apply(optimizer, iteration)
            with torch.autocast(device_type=ctx.device.type, dtype=amp_dtype, enabled=use_amp):
                loss = criterion(net(rgb, x).float(), label.long())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, iteration {iteration}; "
                                         "lower optim.lr or set optim.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            value = loss.detach()
            if ctx.distributed:
                dist.all_reduce(value)
                value = value / ctx.world_size
            value = float(value)
            epoch_losses.append(value)
            result.losses.append(value)
            iteration += 1
            if ctx.is_main:
                if iteration % cfg.train.log_every == 0 or iteration == 1:
                    iter_log.write({"epoch": epoch + 1, "iteration": iteration, "loss": repr(value),
                                    "lr": f"{lr:.4e}"})
                    if writer is not None:
                        writer.add_scalar("train/loss", value, iteration)
                        writer.add_scalar("train/lr", lr, iteration)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if bar is not None:
            bar.close()
        done = epoch + 1
        result.epochs_run.append(done)
        last = done == cfg.schedule.epochs
        metrics = None
        if (cfg.train.eval_every and done % cfg.train.eval_every == 0) or last:
            if ctx.is_main:
                eval_loader = DataLoader(val_ds, batch_size=cfg.eval.batch_size, shuffle=False,
                                         num_workers=min(cfg.data.num_workers, 2))
                metrics = evaluate_dataset(model, eval_loader, num_classes, eval_settings, ctx.device,
                                           info.class_names, progress=cfg.train.progress)
                result.evaluations[done] = metrics
                if writer is not None:
                    writer.add_scalar("val/mIoU", metrics.miou, iteration)
                    writer.add_scalar("val/pixel_accuracy", metrics.pixel_accuracy, iteration)
                print(f"epoch {done}: val mIoU {100 * metrics.miou:.2f}  pixel acc. "
                      f"{100 * metrics.pixel_accuracy:.2f}")
            if ctx.distributed:
                dist.barrier()
        improved = metrics is not None and np.isfinite(metrics.miou) and (best_miou is None or metrics.miou > best_miou)
        if improved:
            best_miou = metrics.miou
        result.best_miou = best_miou
        checkpoint = None
        if done % cfg.train.save_every == 0 or last:
            # Every rank's RNG state, so each process resumes its own streams.
            states = [rng_state()]
            if ctx.distributed:
                gathered: list[Any] = [None] * ctx.world_size
                dist.all_gather_object(gathered, states[0])
                states = gathered
            if ctx.is_main:
                train_state = {
                    "epoch": done, "iteration": iteration, "iters_per_epoch": iters_per_epoch,
                    "best_miou": best_miou, "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None, "rng": states,
                    "world_size": ctx.world_size, "config": cfg.to_dict(),
                }
                checkpoint = out_dir / f"epoch_{done:04d}.pt"
                # State first: a checkpoint file without its state beside it is never listed as resumable.
                atomic_torch_save(train_state, state_path_for(checkpoint))  # plain data: loads with weights_only
                summary = {"epoch": done, "iteration": iteration,
                           "miou": None if metrics is None else float(metrics.miou),
                           "train_state_file": state_path_for(checkpoint).name}
                write_checkpoint(checkpoint, model, info, {"training": summary})
                prune_checkpoints(out_dir, cfg.train.keep_last)
                result.last_checkpoint = checkpoint
        if improved and ctx.is_main:
            best = out_dir / "best.pt"
            per_class = [{k: c[k] for k in ("class", "iou")} for c in metrics.to_dict()["per_class"]]
            write_checkpoint(best, model, info, {"training": {"epoch": done, "miou": float(best_miou),
                                                              "per_class_iou": per_class}})
            result.best_checkpoint = best
        if ctx.is_main:
            epoch_log.write({"epoch": done, "iteration": iteration, "mean_loss": f"{np.mean(epoch_losses):.6f}",
                             "seconds": f"{time.perf_counter() - epoch_start:.1f}",
                             "miou": "" if metrics is None else f"{metrics.miou:.6f}",
                             "pixel_accuracy": "" if metrics is None else f"{metrics.pixel_accuracy:.6f}",
                             "checkpoint": "" if checkpoint is None else checkpoint.name})
        if ctx.distributed:
            dist.barrier()
    if writer is not None:
        writer.close()
    if ctx.distributed:
        dist.barrier()
        dist.destroy_process_group()
    result.seconds = time.perf_counter() - started
    if (out_dir / "best.pt").exists():
        result.best_checkpoint = out_dir / "best.pt"
    return result
