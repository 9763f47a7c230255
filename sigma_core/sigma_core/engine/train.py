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

import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset

from ..checkpoints.errors import ArchitectureMismatchError
from ..data.transforms import IGNORE_INDEX
from ..files import atomic_torch_save, atomic_write_text
from ..inference import resolve_device
from .builders import (
    DatasetInfo,
    base_dataset,
    build_model,
    dataset_info,
    evaluation_dataset,
    initialise_from,
    make_dataset,
)
from .config import RUN_CONFIG, TrainConfig, usable_workers
from .evaluate import EvalSettings, blank_modality_like, evaluate_dataset, unpack_batch
from .metrics import SegmentationMetrics
from .reports import plot_training_curves
from .run_folder import (
    BEST,
    CHECKPOINT_RE,
    CsvLog,
    checkpoint_path,
    list_checkpoints,
    prune_checkpoints,
    read_training_state,
    recorded_training,
    remove_stale_temporaries,
    state_path_for,
    write_checkpoint,
)
from .schedule import WarmupPolySchedule


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
    """AdamW groups: weight decay on weight matrices/kernels only.

    No decay on biases, norms and scales (ndim <= 1) nor on parameters the model tags with
    ``_no_weight_decay = True`` where it declares them (the SSM A_log/D parameters, as mamba_ssm does).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or getattr(p, "_no_weight_decay", False) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------------------------
# The steps of a run, in the order train() takes them.


def set_up_process(cfg: TrainConfig) -> DistContext:
    """Device, process group, CPU threads, determinism and the start-of-run seed of this process."""
    ctx = setup_distributed(cfg.train.device)
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_all(epoch_seed(cfg.train.seed, 0, ctx.rank))  # drop-path draws; augmentations have their own seeds
    return ctx


@dataclass
class TrainingData:
    """The training set and its loader (sharded per process), the validation set, what checkpoints record."""

    train_set: Any
    val_set: Any
    info: DatasetInfo
    sampler: DistributedSampler
    loader: DataLoader
    loader_generator: torch.Generator

    @property
    def iters_per_epoch(self) -> int:
        return len(self.loader)

    def start_epoch(self, epoch: int, seed: int) -> None:
        """Data order, augmentation seeds and worker seeds of ``epoch`` (functions of (seed, epoch) only)."""
        self.sampler.set_epoch(epoch)
        base_dataset(self.train_set).set_epoch(epoch)
        self.loader_generator.manual_seed(epoch_seed(seed, epoch, 0))


def build_datasets(cfg: TrainConfig):
    """(train dataset, validation dataset) for the ``data`` section; ``data.limit``/``eval.limit`` take the first N.

    Raises ValueError when the validation split is empty (no mIoU, so no best.pt could be chosen). With
    data.val_split null there is no validation set (None): asked for, the last epoch becomes best.pt.
    """
    train_set = make_dataset(cfg.data, cfg.data.train_split, train=True, seed=cfg.train.seed)
    if cfg.data.limit is not None:
        train_set = Subset(train_set, range(min(cfg.data.limit, len(train_set))))
    if cfg.data.val_split is None:
        return train_set, None
    try:
        val_set = evaluation_dataset(cfg)
    except ValueError as exc:
        raise ValueError(f"{exc}; without validation images no best.pt can be chosen (or train without "
                         "validation: data.val_split=null, best.pt is then the last epoch)") from None
    return train_set, val_set


def load_data(cfg: TrainConfig, ctx: DistContext) -> TrainingData:
    """The datasets and the training loader. Raises ValueError when there is less than one batch to train on."""
    train_set, val_set = build_datasets(cfg)
    sampler = DistributedSampler(train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=cfg.train.seed, drop_last=True)
    generator = torch.Generator()
    loader = DataLoader(train_set, batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
                        num_workers=usable_workers(cfg.data.num_workers), worker_init_fn=_worker_init,
                        generator=generator,
                        pin_memory=ctx.device.type == "cuda", persistent_workers=False)
    if len(loader) == 0:
        raise ValueError(f"data: {len(train_set)} training samples are fewer than one batch "
                         f"(data.batch_size={cfg.data.batch_size} x {ctx.world_size} processes)")
    return TrainingData(train_set, val_set, dataset_info(train_set), sampler, loader, generator)


@dataclass
class Trainee:
    """The model (and its DDP wrapper ``net``), the optimiser, the AMP scaler and the learning-rate schedule."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: WarmupPolySchedule
    use_amp: bool
    amp_dtype: torch.dtype


def build_trainee(cfg: TrainConfig, num_classes: int, iters_per_epoch: int, ctx: DistContext) -> Trainee:
    """A fresh model on the device with AdamW (published betas, no decay where tagged) and warm-up + poly."""
    model = build_model(cfg, num_classes).to(ctx.device)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    use_amp = cfg.train.amp and ctx.device.type == "cuda"
    amp_dtype = torch.float16 if cfg.train.amp_dtype == "float16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    schedule = WarmupPolySchedule(cfg.optim.lr, cfg.schedule.epochs * iters_per_epoch,
                                  cfg.schedule.warmup_epochs * iters_per_epoch, cfg.schedule.power,
                                  cfg.schedule.warmup_start)
    return Trainee(model, model, optimizer, scaler, schedule, use_amp, amp_dtype)


def wrap_for_processes(trainee: Trainee, ctx: DistContext) -> None:
    """Wrap the model in DistributedDataParallel under torchrun (after its weights are final)."""
    if ctx.distributed:
        trainee.net = torch.nn.parallel.DistributedDataParallel(
            trainee.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


@dataclass
class Progress:
    """Where a run stands: completed epochs and iterations, and its best validation result so far.

    best: {"epoch", "miou", "per_class_iou"} of the best evaluated epoch, or None; best.pt holds that epoch.
    """

    epoch: int = 0
    iteration: int = 0
    best: Optional[dict[str, Any]] = None
    resumed_from: Optional[Path] = None

    @property
    def best_miou(self) -> Optional[float]:
        return None if self.best is None else self.best["miou"]

    def record(self, epoch: int, metrics: Optional[SegmentationMetrics]) -> bool:
        """Take an epoch's validation metrics; True when they beat the best so far (a NaN mIoU never does)."""
        if metrics is None or not np.isfinite(metrics.miou):
            return False
        if self.best is not None and metrics.miou <= self.best["miou"]:
            return False
        per_class = [{k: c[k] for k in ("class", "iou")} for c in metrics.to_dict()["per_class"]]
        self.best = {"epoch": epoch, "miou": float(metrics.miou), "per_class_iou": per_class}
        return True


def resume_point(cfg: TrainConfig, out_dir: Path) -> Optional[Path]:
    """The checkpoint to resume from: train.resume, or with "auto" the newest complete one in out_dir (or None)."""
    if cfg.train.resume == "auto":
        found = list_checkpoints(out_dir) if out_dir.is_dir() else []
        return found[-1][1] if found else None
    return Path(cfg.train.resume) if cfg.train.resume else None


def check_same_data(resume: Path, info: Any, root: Any) -> None:
    """ValueError when the checkpoint to resume was trained on other classes or another modality than the data
    now configured: data.root may be changed on resume to follow a moved dataset, not to swap it."""
    from ..checkpoints import read_checkpoint, read_meta

    held = read_meta(read_checkpoint(resume), str(resume))
    differ = []
    if list(held.class_names) != list(info.class_names):
        differ.append(f"its classes are {len(held.class_names)} ({', '.join(held.class_names[:4])}, ...), the "
                      f"data's {len(info.class_names)} ({', '.join(info.class_names[:4])}, ...)")
    if held.modality != info.scaling.modality:
        differ.append(f"it is a {held.modality} model, the data is {info.scaling.modality}")
    if differ:
        raise ValueError(f"{resume} was trained on other data than data.root={root}: {'; '.join(differ)}. Resuming "
                         f"may move a dataset, not change it: to train on this one, start a new run with "
                         f"model.init={resume}")


def resume_or_initialise(cfg: TrainConfig, trainee: Trainee, iters_per_epoch: int, ctx: DistContext,
                         out_dir: Path, info: Any = None) -> Progress:
    """Restore weights, optimiser, scaler, progress and RNGs from the resume checkpoint, or load model.init.

    Raises FileNotFoundError/ValueError when the checkpoint is missing, lacks its state, or was saved with
    another number of iterations per epoch (other data, batch size or process count).
    """
    resume = resume_point(cfg, out_dir)
    if resume is None:
        if cfg.model.init:
            report = initialise_from(trainee.model, cfg.model.init)
            if ctx.is_main:
                print(f"initialised from {cfg.model.init}: {report}")
        return Progress()
    if info is not None and resume.is_file():
        check_same_data(resume, info, cfg.data.root)
    try:
        state = read_training_state(resume, trainee.model)
    except ArchitectureMismatchError as e:
        if not (resume.parent / RUN_CONFIG).is_file():
            raise
        # the run's own config.yaml builds the model on resume (model overrides are refused), so it is to blame
        raise ArchitectureMismatchError(
            f"{resume.parent / RUN_CONFIG} does not describe the checkpoints beside it: {resume.name} holds {e.held}, "
            f"the config builds {e.built} ({', '.join(e.fields)} differ). It was edited or copied from another run: "
            f"restore the run's own config.yaml, or start a new run from {resume} with model.init={resume}",
            e.held, e.built, e.fields) from None
    if state.get("iters_per_epoch") not in (None, iters_per_epoch):
        raise ValueError(f"{resume}: saved with {state['iters_per_epoch']} iterations per epoch, now "
                         f"{iters_per_epoch}; resume with the same data, batch size and process count")
    trainee.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        trainee.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"][min(ctx.rank, len(state["rng"]) - 1)])
    best = state.get("best")
    if best is None and state.get("best_miou") is not None:  # states written before best records
        best = {"epoch": None, "miou": state["best_miou"], "per_class_iou": []}
    return Progress(state["epoch"], state["iteration"], best, resume)


def restore_best_checkpoint(out_dir: Path, progress: Progress, model: torch.nn.Module, info: DatasetInfo) -> None:
    """Finish a best.pt a kill interrupted: when the resumed epoch is the best one, best.pt must hold it.

    best.pt is written after the epoch's state (the commit point); killed in between, the state says the
    resumed epoch is best while best.pt still holds an older one. The weights just loaded are that epoch's.
    """
    best = progress.best
    if best is None or best.get("epoch") != progress.epoch:
        return
    recorded = recorded_training(out_dir / BEST) if (out_dir / BEST).is_file() else None
    if recorded is None or recorded.get("epoch") != best["epoch"]:
        write_best_checkpoint(out_dir, model, info, best)


def write_best_checkpoint(out_dir: Path, model: torch.nn.Module, info: DatasetInfo, best: dict[str, Any]) -> Path:
    path = out_dir / BEST
    write_checkpoint(path, model, info, {"training": {"epoch": best["epoch"], "miou": best["miou"],
                                                      "per_class_iou": best["per_class_iou"]}})
    return path


def training_input_size(cfg: TrainConfig, data: TrainingData) -> Optional[tuple[int, int]]:
    """(H, W) of the training inputs: the crop, else the recorded image size at the largest scale (or None)."""
    base = base_dataset(data.train_set)
    if base.transform is not None and base.transform.crop_size is not None:
        return tuple(base.transform.crop_size)
    size = base.spec.image_size
    return None if size is None else (round(size[0] * max(cfg.data.scales)), round(size[1] * max(cfg.data.scales)))


def check_memory(cfg: TrainConfig, data: TrainingData, model: torch.nn.Module, ctx: DistContext) -> Optional[str]:
    """Estimate the memory one training step needs (measured activations, see engine.memory) and return a
    warning with settings that fit when it exceeds what the device (or host) has free; None when it fits."""
    from .memory import available_memory, estimate_training_memory, memory_warning

    size = training_input_size(cfg, data)
    if size is None:
        return None
    estimate = estimate_training_memory(model, cfg.data.batch_size, size, ctx.device)
    sharing = 1 if ctx.device.type == "cuda" else int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    return memory_warning(estimate, available_memory(ctx.device), processes_per_device=sharing)


def check_out_dir(cfg: TrainConfig, out_dir: Path) -> None:
    """Refuse to start a new run over another run's files (it would replace its logs and checkpoints), or in a
    folder that cannot be created (a file in the way)."""
    from ..files import check_folder_can_be_made

    check_folder_can_be_made(out_dir, "train.out_dir")
    if cfg.train.resume or not out_dir.is_dir():
        return
    theirs = sorted(p.name for p in out_dir.iterdir()
                    if p.name in ("config.yaml", "epochs.csv", "train_log.csv", BEST) or CHECKPOINT_RE.match(p.name))
    if theirs:
        raise ValueError(f"train.out_dir {out_dir} already holds a run ({', '.join(theirs[:4])}); continue it with "
                         "--resume auto (train.resume=auto), or give another train.out_dir")


CURVES_PNG = "training_curves.png"


def epoch_line(done: int, epochs: int, loss: float, lr: float, seconds: float,
               metrics: Optional[SegmentationMetrics], best: Optional[dict[str, Any]], eval_every: int) -> str:
    """The one console line per epoch: train loss, learning rate, time, validation mIoU, best so far."""
    line = f"epoch {done}/{epochs}: train loss {loss:.4f}, lr {lr:.2e}, {seconds:.1f} s"
    if metrics is not None:
        line += f"; val mIoU {100 * metrics.miou:.2f}, pixel acc. {100 * metrics.pixel_accuracy:.2f}"
    else:
        line += f"; no validation this epoch (train.eval_every={eval_every})"
    if best is not None and best.get("miou") is not None:
        at = f" (epoch {best['epoch']})" if best.get("epoch") else ""
        line += f"; best val mIoU {100 * best['miou']:.2f}{at}"
    return line


def class_iou_table(metrics: SegmentationMetrics, per_line: int = 4) -> str:
    """Per-class IoU at a validation, a few classes a line (40 classes fit in 10 lines)."""
    cells = [f"{name[:14]:<14} {100 * iou:5.1f}" if np.isfinite(iou) else f"{name[:14]:<14}   n/a"
             for name, iou in zip(metrics.class_names, metrics.iou)]
    rows = ["  " + " | ".join(cells[i:i + per_line]) for i in range(0, len(cells), per_line)]
    return "  per-class IoU (%):\n" + "\n".join(rows)


class RunLogs:
    """What rank 0 records while training: train_log.csv (per iteration), epochs.csv (per epoch), TensorBoard,
    the progress bar and the printed lines. On resume the logs are cut back to the resume point."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, progress: Progress):
        fresh = progress.resumed_from is None
        self.cfg = cfg
        self.iterations = CsvLog(out_dir / "train_log.csv", ["epoch", "iteration", "loss", "lr"],
                                 truncate_after=("iteration", progress.iteration), fresh=fresh)
        self.epochs = CsvLog(out_dir / "epochs.csv", ["epoch", "iteration", "mean_loss", "seconds", "miou",
                                                      "pixel_accuracy", "checkpoint"],
                             truncate_after=("epoch", progress.epoch), fresh=fresh)
        self.writer = None
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # `pip install ./sigma_core` without the [train] extra: the run needs no TensorBoard
                print("warning: tensorboard is not installed, so this run writes no TensorBoard logs (epochs.csv, "
                      "train_log.csv and training_curves.png have the numbers): pip install tensorboard, or "
                      "set train.tensorboard=false", file=sys.stderr, flush=True)
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=progress.iteration)
        self.bar = None

    def start_epoch(self, epoch: int, iters: int) -> None:
        if self.cfg.train.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=iters, desc=f"epoch {epoch + 1}/{self.cfg.schedule.epochs}", dynamic_ncols=True,
                            leave=False)

    def iteration(self, epoch: int, iteration: int, loss: float, lr: float) -> None:
        if iteration % self.cfg.train.log_every == 0 or iteration == 1:
            self.iterations.write({"epoch": epoch + 1, "iteration": iteration, "loss": repr(loss), "lr": f"{lr:.4e}"})
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, iteration)
                self.writer.add_scalar("train/lr", lr, iteration)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")

    def end_epoch(self, done: int, iteration: int, losses: list[float], seconds: float,
                  metrics: Optional[SegmentationMetrics], checkpoint: Optional[Path], lr: float = float("nan"),
                  best: Optional[dict[str, Any]] = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if metrics is not None and self.writer is not None:
            self.writer.add_scalar("val/mIoU", metrics.miou, iteration)
            self.writer.add_scalar("val/pixel_accuracy", metrics.pixel_accuracy, iteration)
        print(epoch_line(done, self.cfg.schedule.epochs, float(np.mean(losses)), lr, seconds, metrics, best,
                         self.cfg.train.eval_every), flush=True)
        if metrics is not None:
            print(class_iou_table(metrics), flush=True)
        self.epochs.write({"epoch": done, "iteration": iteration, "mean_loss": f"{np.mean(losses):.6f}",
                           "seconds": f"{seconds:.1f}", "miou": "" if metrics is None else f"{metrics.miou:.6f}",
                           "pixel_accuracy": "" if metrics is None else f"{metrics.pixel_accuracy:.6f}",
                           "checkpoint": "" if checkpoint is None else checkpoint.name})
        try:  # a picture of the run so far, next to the TensorBoard logs; never a reason to stop training
            plot_training_curves(self.epochs.path, self.epochs.path.parent / CURVES_PNG)
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"warning: {CURVES_PNG} not written: {exc}", file=sys.stderr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_run_folder(cfg: TrainConfig, out_dir: Path, progress: Progress, model: torch.nn.Module,
                    info: DatasetInfo) -> RunLogs:
    """Create (or reopen) the run folder: stale temporaries removed, config.yaml, a best.pt a kill left
    unwritten finished, the logs cut back to the resume point."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    atomic_write_text(out_dir / "config.yaml", cfg.to_yaml())
    restore_best_checkpoint(out_dir, progress, model, info)
    return RunLogs(cfg, out_dir, progress)


def start_up_summary(cfg: TrainConfig, ctx: DistContext, data: TrainingData, model: torch.nn.Module,
                     progress: Progress, out_dir: Path) -> str:
    """The lines a run prints before its first iteration: device, model, data, where it starts, where it writes."""
    crop = base_dataset(data.train_set).transform.crop_size
    threads = f", {torch.get_num_threads()} threads" if ctx.device.type == "cpu" else ""
    processes = f" x {ctx.world_size} processes" if ctx.distributed else ""
    params = sum(p.numel() for p in model.parameters())
    lines = [
        f"device {ctx.device}{threads}{processes}; model {model.config.name}, {params / 1e6:.2f} M parameters, "
        f"{len(data.info.class_names)} classes ({data.info.scaling.modality})",
        f"data {cfg.data.root}: {len(data.train_set)} training images ({cfg.data.train_split}), "
        + (f"{len(data.val_set)} validation images ({cfg.data.val_split}); crop " if data.val_set is not None else
           "no validation (data.val_split null: best.pt will be the last epoch); crop ") +
        f"{'whole images' if crop is None else f'{crop[0]}x{crop[1]}'}, batch {cfg.data.batch_size}{processes}, "
        f"{data.iters_per_epoch} iterations per epoch",
    ]
    workers = usable_workers(cfg.data.num_workers)
    if workers < cfg.data.num_workers:
        lines.append(f"data.num_workers {cfg.data.num_workers} -> {workers}: the CPUs this process may use")
    if progress.resumed_from is not None:
        best = "none yet" if progress.best is None else (
            ("none (no validation)" if progress.best["miou"] is None else f"{100 * progress.best['miou']:.2f}")
            + (f" at epoch {progress.best['epoch']}"
                                                     if progress.best.get("epoch") else ""))
        lines.append(f"resumed from epoch {progress.epoch} ({progress.resumed_from}); best val mIoU {best}; "
                     f"{cfg.schedule.epochs - progress.epoch} epochs to go")
    else:
        lines.append(f"starting at epoch 1 of {cfg.schedule.epochs}")
    lines.append(f"writing to {out_dir}")
    return "\n".join(lines)


def train_one_epoch(cfg: TrainConfig, trainee: Trainee, data: TrainingData, ctx: DistContext, epoch: int,
                    progress: Progress, logs: Optional[RunLogs]) -> list[float]:
    """One pass over this process's shard: forward, loss, backward, optimiser step per batch.

    Returns the losses (averaged over processes); advances progress.iteration. Raises FloatingPointError
    on a non-finite loss.
    """
    criterion = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    data.start_epoch(epoch, cfg.train.seed)
    trainee.net.train()
    if logs is not None:
        logs.start_epoch(epoch, data.iters_per_epoch)
    losses = []
    for batch in data.loader:
        rgb, x, label = (t.to(ctx.device, non_blocking=True) for t in unpack_batch(batch))
        x = drop_modality(x, cfg.data.modality_dropout)
        lr = trainee.schedule.apply(trainee.optimizer, progress.iteration)
        with torch.autocast(device_type=ctx.device.type, dtype=trainee.amp_dtype, enabled=trainee.use_amp):
            loss = criterion(trainee.net(rgb, x).float(), label.long())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, iteration {progress.iteration}; "
                                     "lower optim.lr or set optim.grad_clip")
        trainee.optimizer.zero_grad(set_to_none=True)
        trainee.scaler.scale(loss).backward()
        if cfg.optim.grad_clip:
            trainee.scaler.unscale_(trainee.optimizer)
            torch.nn.utils.clip_grad_norm_(trainee.model.parameters(), cfg.optim.grad_clip)
        trainee.scaler.step(trainee.optimizer)
        trainee.scaler.update()
        value = loss.detach()
        if ctx.distributed:
            dist.all_reduce(value)
            value = value / ctx.world_size
        value = float(value)
        losses.append(value)
        progress.iteration += 1
        if logs is not None:
            logs.iteration(epoch, progress.iteration, value, lr)
    return losses


def evaluation_due(cfg: TrainConfig, done: int) -> bool:
    if cfg.data.val_split is None:  # asked to train without validation
        return False
    return bool(cfg.train.eval_every and done % cfg.train.eval_every == 0) or done == cfg.schedule.epochs


def evaluate_epoch(cfg: TrainConfig, trainee: Trainee, data: TrainingData, ctx: DistContext) -> SegmentationMetrics:
    """Validation metrics of the current weights (rank 0 only), as configured in the ``eval`` section."""
    loader = DataLoader(data.val_set, batch_size=cfg.eval.batch_size, shuffle=False,
                        num_workers=min(usable_workers(cfg.data.num_workers), 2))
    settings = EvalSettings.from_section(cfg.eval, cfg.data.crop_size)
    return evaluate_dataset(trainee.model, loader, len(data.info.class_names), settings, ctx.device,
                            data.info.class_names, progress=cfg.train.progress)


def gather_rng_states(ctx: DistContext) -> list[dict[str, Any]]:
    """Every process's RNG states (rank order), so each resumes its own streams."""
    states = [rng_state()]
    if ctx.distributed:
        gathered: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(gathered, states[0])
        states = gathered
    return states


def save_epoch(cfg: TrainConfig, trainee: Trainee, data: TrainingData, ctx: DistContext, out_dir: Path,
               progress: Progress, metrics: Optional[SegmentationMetrics], improved: bool, rng: list[Any]) -> Path:
    """Write the epoch's checkpoint and training state, then best.pt when improved, then prune old epochs.

    The order makes every kill point resume consistently: the state file is the commit point (a checkpoint
    without it is not resumable and is overwritten when the epoch is redone); best.pt follows it, and a
    kill before best.pt is written is finished on resume (restore_best_checkpoint).
    """
    done = progress.epoch
    checkpoint = checkpoint_path(out_dir, done)
    summary = {"epoch": done, "iteration": progress.iteration,
               "miou": None if metrics is None else float(metrics.miou),
               "train_state_file": state_path_for(checkpoint).name}
    write_checkpoint(checkpoint, trainee.model, data.info, {"training": summary})
    train_state = {
        "epoch": done, "iteration": progress.iteration, "iters_per_epoch": data.iters_per_epoch,
        "best_miou": progress.best_miou, "best": progress.best, "optimizer": trainee.optimizer.state_dict(),
        "scaler": trainee.scaler.state_dict() if trainee.scaler.is_enabled() else None, "rng": rng,
        "world_size": ctx.world_size, "config": cfg.to_dict(),
    }
    atomic_torch_save(train_state, state_path_for(checkpoint))  # plain data: loads with weights_only
    if improved:
        write_best_checkpoint(out_dir, trainee.model, data.info, progress.best)
    prune_checkpoints(out_dir, cfg.train.keep_last)
    return checkpoint


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def train(cfg: TrainConfig) -> TrainResult:
    """Train as configured; returns a TrainResult.

    Raises ValueError on configuration or data problems (before anything is written), FileNotFoundError
    for a missing resume checkpoint, FloatingPointError on a diverging loss.
    """
    started = time.perf_counter()
    ctx = set_up_process(cfg)
    out_dir = Path(cfg.train.out_dir)
    if ctx.is_main:
        check_out_dir(cfg, out_dir)
    data = load_data(cfg, ctx)
    trainee = build_trainee(cfg, len(data.info.class_names), data.iters_per_epoch, ctx)
    progress = resume_or_initialise(cfg, trainee, data.iters_per_epoch, ctx, out_dir, data.info)
    logs = None
    if ctx.is_main:  # rank 0 logs and writes; everything is checked, so now the run folder may be written
        warning = check_memory(cfg, data, trainee.model, ctx)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        logs = open_run_folder(cfg, out_dir, progress, trainee.model, data.info)
        print(start_up_summary(cfg, ctx, data, trainee.model, progress, out_dir), flush=True)
    wrap_for_processes(trainee, ctx)

    result = TrainResult(out_dir, [], [], {}, progress.best_miou, None, None, 0.0)
    for epoch in range(progress.epoch, cfg.schedule.epochs):
        epoch_start = time.perf_counter()
        losses = train_one_epoch(cfg, trainee, data, ctx, epoch, progress, logs)
        progress.epoch = done = epoch + 1
        result.losses += losses
        result.epochs_run.append(done)
        metrics = None
        if evaluation_due(cfg, done):
            if ctx.is_main:
                metrics = result.evaluations[done] = evaluate_epoch(cfg, trainee, data, ctx)
            barrier(ctx)
        improved = bool(broadcast(ctx, progress.record(done, metrics)))
        if data.val_set is None and done == cfg.schedule.epochs:  # no validation: the result is the last epoch
            progress.best = {"epoch": done, "miou": None, "per_class_iou": []}
            improved = True
        save = done % cfg.train.save_every == 0 or done == cfg.schedule.epochs or improved  # best.pt: resumable
        checkpoint = checkpoint_path(out_dir, done) if save else None
        if logs is not None:  # the epoch's row precedes its commit; a resume cuts the rows of uncommitted epochs
            logs.end_epoch(done, progress.iteration, losses, time.perf_counter() - epoch_start, metrics, checkpoint,
                           lr=trainee.optimizer.param_groups[0]["lr"], best=progress.best)
        if save:
            rng = gather_rng_states(ctx)
            if ctx.is_main:
                result.last_checkpoint = save_epoch(cfg, trainee, data, ctx, out_dir, progress, metrics, improved,
                                                    rng)
        result.best_miou = progress.best_miou
        barrier(ctx)
    if logs is not None:
        logs.close()
    if ctx.distributed:
        dist.barrier()
        dist.destroy_process_group()
    result.seconds = time.perf_counter() - started
    if (out_dir / BEST).exists():
        result.best_checkpoint = out_dir / BEST
    return result


def broadcast(ctx: DistContext, value: Any) -> Any:
    """Rank 0's ``value`` on every process (only rank 0 evaluates, but all must agree to save an epoch)."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
