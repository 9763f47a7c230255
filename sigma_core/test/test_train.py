"""Training: config/overrides, schedule, loss goes down, beats chance, exact kill-and-resume, torchrun (gloo, CPU)."""
import csv
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from sigma_core.checkpoints import load_checkpoint
from sigma_core.data.synthetic import CLASSES, write_dataset
from sigma_core.engine.config import TrainConfig, apply_overrides, list_presets, parse_value
from sigma_core.engine.metrics import chance_miou
from sigma_core.engine.run_folder import list_checkpoints, state_path_for
from sigma_core.engine.schedule import WarmupPolySchedule
from sigma_core.engine.train import train

TINY = ["model.variant=null", "model.depths=[1,1,1,1]", "model.dims=32", "model.decoder_depths=[1,1,1]",
        "model.drop_path_rate=0.1", "data.crop_size=[32,48]", "data.scales=[0.75,1.0,1.25]", "data.batch_size=4",
        "data.num_workers=0", "optim.lr=2e-3", "train.device=cpu", "train.threads=1", "train.progress=false",
        "train.tensorboard=false", "train.log_every=1", "train.deterministic=true"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """64 synthetic RGB-thermal scenes, 32x48: 48 for training, 16 held out."""
    return write_dataset(tmp_path_factory.mktemp("synth"), n=64, seed=3, size=(32, 48))


def tiny_config(root, out, *extra):
    return TrainConfig.load(None, [*TINY, f"data.root={root}", f"train.out_dir={out}", *extra])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_defaults_are_the_published_recipe_and_overrides_parse():
    cfg = TrainConfig.load()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.data.batch_size) == (6e-5, 0.01, 8)
    assert (cfg.schedule.epochs, cfg.schedule.warmup_epochs, cfg.schedule.power) == (500, 10, 0.9)
    assert cfg.data.scales == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert parse_value("6e-5") == 6e-5 and parse_value("[1, 2]") == [1, 2] and parse_value("null") is None
    assert apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "data.root=x"]) == {
        "optim": {"lr": 3e-4}, "data": {"root": "x"}}
    cfg = TrainConfig.load("mfnet", ["data.batch_size=2", "eval.flip=true"])
    assert (cfg.data.preset, cfg.data.batch_size, cfg.eval.flip, cfg.model.variant) == ("mfnet", 2, True, "tiny")
    assert set(list_presets()) >= {"mfnet", "pst900", "nyudv2", "sunrgbd", "custom", "synthetic_demo"}
    for preset in list_presets():
        TrainConfig.load(preset)
    assert TrainConfig.load("nyudv2").eval.scales == [0.75, 1.0, 1.25]


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "optim.lrr"),
    ("optimizer.lr=1", "unknown section"),
    ("data.batch_size=many", "data.batch_size must be an integer"),
    ("eval.mode=tiled", "eval.mode"),
    ("lr=1", "section.key=value"),
    ("data.crop_size=120,160", r"must be a list, got .120,160.; write it in brackets, e.g. data.crop_size=\[120,160\]"),
    ("data.crop_size=32", r"must be a list, got 32; write it in brackets, e.g. data.crop_size=\[32,32\]"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.load(None, [override])


def test_warmup_then_poly_schedule():
    s = WarmupPolySchedule(1.0, total_iters=110, warmup_iters=10, power=0.9, warmup_start=0.0)
    assert s.lr_at(0) == 0.0 and s.lr_at(5) == pytest.approx(0.5) and s.lr_at(10) == 1.0
    assert s.lr_at(60) == pytest.approx(0.5 ** 0.9)
    assert s.lr_at(109) == pytest.approx((1 / 100) ** 0.9)
    lrs = [s.lr_at(i) for i in range(10, 110)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_short_run_lowers_the_loss_and_beats_chance(synth, tmp_path, capsys):
    cfg = tiny_config(synth, tmp_path / "run", "schedule.epochs=5", "schedule.warmup_epochs=1", "train.eval_every=2",
                      "data.limit=32", "train.tensorboard=true")
    result = train(cfg)
    losses = result.losses
    assert len(losses) == 5 * 8
    assert sum(losses[-8:]) / 8 < 0.75 * sum(losses[:8]) / 8
    final = result.evaluations[5]  # on the 16 held-out scenes
    chance = chance_miou(final.pixels_per_class)
    assert final.miou > max(chance.values()) + 0.05, (final.miou, chance)
    assert final.class_names == list(CLASSES)
    # files: resumable checkpoints (last K), best by mIoU in our format, CSV and TensorBoard logs
    assert [e for e, _ in list_checkpoints(tmp_path / "run")] == [3, 4, 5]
    model, meta = load_checkpoint(tmp_path / "run" / "best.pt")
    assert meta.class_names == list(CLASSES) and meta.modality == "thermal"
    assert meta.extra["training"]["miou"] == pytest.approx(result.best_miou)
    assert result.best_miou == max(m.miou for m in result.evaluations.values())
    rows = read_csv(tmp_path / "run" / "epochs.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 6)) and rows[1]["miou"] and not rows[2]["miou"]
    assert [float(r["loss"]) for r in read_csv(tmp_path / "run" / "train_log.csv")] == losses
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    # issue 22: one console line per epoch (loss, lr, time, val mIoU, best so far), a per-class IoU table at each
    # validation, and the curves as a picture in the run folder
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 5, out
    assert re.fullmatch(r"epoch 2/5: train loss [\d.]+, lr [\d.]+e-0\d, [\d.]+ s; val mIoU [\d.]+, pixel acc\. "
                        r"[\d.]+; best val mIoU [\d.]+ \(epoch 2\)", lines[1]), lines[1]
    assert "no validation this epoch (train.eval_every=2)" in lines[2]
    assert out.count("per-class IoU (%):") == 3 and re.search(r"^  background +[\d.]+ \| road ", out, re.M)
    png = (tmp_path / "run" / "training_curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def sigma_train(*args):
    return subprocess.Popen([sys.executable, "-m", "sigma_core.cli.train", *TINY, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_kill_and_resume_equals_an_uninterrupted_run(synth, tmp_path):
    common = [f"data.root={synth}", "schedule.epochs=6", "schedule.warmup_epochs=1", "train.eval_every=0",
              "data.limit=12", "train.keep_last=10"]
    straight_dir, run = tmp_path / "straight", tmp_path / "killed"
    straight = sigma_train(*common, f"train.out_dir={straight_dir}")
    # The same run in another process, killed (SIGKILL: no clean-up) once epoch 2 is checkpointed.
    killed = sigma_train(*common, f"train.out_dir={run}")
    deadline = time.monotonic() + 120
    while not (run / "epoch_0002.pt").exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert (run / "epoch_0002.pt").exists(), killed.stderr.read()
    for epoch in range(3, 7):  # if it got further than epoch 2, forget that
        (run / f"epoch_{epoch:04d}.pt").unlink(missing_ok=True)
        state_path_for(run / f"epoch_{epoch:04d}.pt").unlink(missing_ok=True)
    assert straight.wait(timeout=180) == 0, straight.stderr.read()

    # Issue 22: the run folder alone, nothing retyped (its config.yaml holds TINY and the overrides above)
    resumed = subprocess.run([sys.executable, "-m", "sigma_core.cli.train", "--resume", str(run)],
                             capture_output=True, text=True, timeout=180)  # epoch 2, or 1 if killed before its commit
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resumed from epoch [12] \(.*epoch_000[12].pt\)", resumed.stdout), resumed.stdout
    # every loss equal to the last bit (the log keeps the float's repr), the log continuing without the
    # killed run's later rows; final weights identical
    assert read_csv(run / "train_log.csv") == read_csv(straight_dir / "train_log.csv")
    assert len(read_csv(run / "train_log.csv")) == 6 * 3
    a = load_checkpoint(straight_dir / "epoch_0006.pt")[0].state_dict()
    b = load_checkpoint(run / "epoch_0006.pt")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(state_path_for(run / "epoch_0006.pt"), weights_only=True)
    assert (state["epoch"], state["iteration"]) == (6, 18)
    # a finished run resumes to nothing more
    again = train(tiny_config(synth, run, *common[1:], "train.resume=auto"))
    assert again.epochs_run == []


def test_resume_takes_the_run_folders_config_and_refuses_overrides_that_change_the_run(synth, tmp_path, capsys):
    from sigma_core.cli.train import load_config
    from sigma_core.engine.config import resume_config

    run = tmp_path / "run"
    run.mkdir()
    saved = tiny_config(synth, run, "schedule.epochs=3", "schedule.warmup_epochs=1")
    (run / "config.yaml").write_text(saved.to_yaml())
    # only the out_dir, or only the folder: the saved configuration, nothing retyped
    for resume, overrides in (("auto", [f"train.out_dir={run}"]), (str(run), [])):
        cfg = load_config(None, resume, overrides)
        assert cfg.model == saved.model and cfg.data == saved.data and cfg.schedule == saved.schedule
        assert cfg.train.resume == "auto" and cfg.train.out_dir == str(run)
    # more epochs and a moved dataset are safe; a checkpoint path resumes from that checkpoint
    cfg = resume_config(run, str(run / "epoch_0002.pt"), ["schedule.epochs=5", f"data.root={synth}"])
    assert cfg.schedule.epochs == 5 and cfg.train.resume == str(run / "epoch_0002.pt")
    with pytest.raises(ValueError, match=r"cannot change on resume: model.dims \(the run has 32, given 64\); "
                                         r"optim.lr \(the run has 0.002, given 0.1\)\. .*Start a new run"):
        resume_config(run, "auto", ["model.dims=64", "optim.lr=0.1", "train.eval_every=3"])
    with pytest.raises(ValueError, match="resuming may only add epochs"):
        resume_config(run, "auto", ["schedule.epochs=2"])
    done = subprocess.run([sys.executable, "-m", "sigma_core.cli.train", "--resume", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a sigma-train run folder" in done.stderr and done.stderr.count("\n") == 1


def test_resume_attacks_a_damaged_config_fewer_epochs_and_another_out_dir(synth, tmp_path):
    """Issue 22 attacks: an empty config.yaml resumed with the built-in defaults ('data.root is not set'); fewer
    epochs were named as a warm-up change; train.out_dir=elsewhere on resume was accepted and silently ignored."""
    from sigma_core.engine.config import resume_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(tiny_config(synth, run, "schedule.epochs=3", "schedule.warmup_epochs=2").to_yaml())
    with pytest.raises(ValueError, match=r"schedule.epochs=1 is fewer than the run's 3: resuming may only add epochs"):
        resume_config(run, "auto", ["schedule.epochs=1"])
    with pytest.raises(ValueError, match=r"train.out_dir=.*elsewhere: a resumed run writes to its own folder .*copy"):
        resume_config(run, str(run), [f"train.out_dir={tmp_path / 'elsewhere'}"])
    assert resume_config(run, str(run), [f"train.out_dir={run}/"]).train.out_dir == str(run)
    for damaged in ("", "name: synthetic\nclasses: [a, b]\n"):  # emptied, or another YAML in its place
        (run / "config.yaml").write_text(damaged)
        with pytest.raises(ValueError, match="config.yaml holds no sigma-train configuration"):
            resume_config(run, "auto", [])


def test_resume_with_a_config_yaml_of_another_model_blames_the_config_not_an_override(synth, tmp_path):
    """Issue 22 attack: a run folder whose config.yaml describes another model (edited, or copied from another run)
    advised 'model.dims=32', an override resume refuses: a dead end. It now names the config.yaml and the fix."""
    from sigma_core.checkpoints.errors import ArchitectureMismatchError
    from sigma_core.cli.train import load_config

    run = tmp_path / "run"
    train(tiny_config(synth, run, "schedule.epochs=1", "schedule.warmup_epochs=1", "data.limit=8",
                      "train.eval_every=0"))
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("dims: 32", "dims: 64"))
    with pytest.raises(ArchitectureMismatchError, match=r"run/config.yaml does not describe the checkpoints beside "
                                                        r"it: epoch_0001.pt holds .*width 32.*width 64.*\(dims "
                                                        r"differ\)\. It was edited or copied from another run"):
        train(load_config(None, str(run), ["schedule.epochs=2"]))


def test_resume_onto_a_dataset_of_another_modality_is_refused(synth, tmp_path):
    """Issue 22 attack: data.root (safe on resume: a moved dataset) pointed at a depth dataset of the same size
    trained the thermal run's model on depth without a word."""
    from sigma_core.cli.train import load_config

    run = tmp_path / "run"
    train(tiny_config(synth, run, "schedule.epochs=1", "schedule.warmup_epochs=1", "data.limit=8",
                      "train.eval_every=0"))
    depth = write_dataset(tmp_path / "depth", n=64, seed=3, size=(32, 48), modality="depth")
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ValueError, match=r"epoch_0001.pt was trained on other data than data.root=.*depth: it is a "
                                         r"thermal model, the data is depth\. .*model.init="):
        train(load_config(None, str(run), ["schedule.epochs=2", f"data.root={depth}"]))
    assert sorted(p.name for p in run.iterdir()) == before  # refused before anything was written


def test_torchrun_two_processes_gloo(synth, tmp_path):
    run = tmp_path / "ddp"
    args = [*TINY, f"data.root={synth}", f"train.out_dir={run}", "schedule.epochs=1", "schedule.warmup_epochs=0",
            "train.eval_every=1", "data.limit=16", "eval.limit=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", "-m", "sigma_core.cli.train", *args],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 1 epochs") == 1, proc.stdout  # rank 0 reports
    model, meta = load_checkpoint(run / "epoch_0001.pt")
    assert meta.class_names == list(CLASSES) and meta.config.dims == 32
    assert not any(k.startswith("module.") for k in model.state_dict())
    state = torch.load(state_path_for(run / "epoch_0001.pt"), weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["iteration"] == 2  # 16 samples / (2 processes x batch 4)
    assert (run / "best.pt").exists()


def test_cli_errors_are_one_line(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "sigma_core.cli.train", "optim.lr=oops"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "optim.lr must be a number" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "sigma_core.cli.train", *TINY, f"data.root={tmp_path / 'none'}",
                              f"train.out_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "none" in missing.stderr


def test_fine_tuning_init_drops_a_class_head_of_another_size(tmp_path):
    from sigma_core import SigmaConfig, build_sigma, save_checkpoint
    from sigma_core.engine.builders import initialise_from, model_config

    cfg = TrainConfig.load(None, TINY)
    torch.manual_seed(0)
    source = build_sigma(model_config(cfg, 5))
    path = save_checkpoint(tmp_path / "five.pt", source, source.config)
    target = build_sigma(model_config(cfg, len(CLASSES)))
    assert isinstance(target.config, SigmaConfig) and target.config.num_classes == len(CLASSES)
    report = initialise_from(target, str(path))
    assert report.dropped == ["decode_head.output.weight"]  # the class head keeps its fresh initialisation
    assert set(report.missing) <= {"decode_head.output.weight"}
    src, dst = source.state_dict(), target.state_dict()
    assert all(torch.equal(src[k], dst[k]) for k in src if not k.startswith("decode_head.output"))


def test_modality_dropout_blanks_whole_samples():
    from sigma_core.engine.evaluate import blank_modality_like
    from sigma_core.engine.train import drop_modality

    x = torch.randn(64, 3, 4, 5)
    assert drop_modality(x, 0.0) is x
    assert torch.equal(drop_modality(x, 1.0), blank_modality_like(x))
    torch.manual_seed(0)
    out = drop_modality(x, 0.5)
    blanked = [torch.equal(o, b) for o, b in zip(out, blank_modality_like(x))]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(b != k for b, k in zip(blanked, kept)) and 16 < sum(blanked) < 48
    with pytest.raises(ValueError, match="data.modality_dropout"):
        TrainConfig.load(None, ["data.modality_dropout=1.5"])


def run_in_child(fn, kill_at_write=None):
    """Run ``fn()`` in a forked process; with ``kill_at_write`` N it SIGKILLs itself as its N-th atomic write
    is about to land (the temporary written, not yet renamed). Returns (exit status, writes it made)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest clean-up may run here
        os.close(read)
        code = 1
        try:
            real_replace, count = os.replace, [0]

            def replace(src, dst):
                count[0] += 1
                if count[0] == kill_at_write:
                    os.kill(os.getpid(), signal.SIGKILL)
                real_replace(src, dst)

            os.replace = replace
            fn()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os.write(write, str(count[0]).encode())
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        text = f.read()
    return status, int(text) if text else None


def test_every_kill_point_resumes_to_a_consistent_run(synth, tmp_path, monkeypatch):
    """SIGKILL at each write of a run (config, logs, checkpoint, state, best.pt), then resume: the run ends as an
    uninterrupted one does: the same losses and epochs.csv rows, best.pt holding the best mIoU the state records,
    no temporaries left behind."""
    common = ["schedule.epochs=2", "schedule.warmup_epochs=0", "train.eval_every=1", "data.limit=4",
              "eval.limit=2", "train.keep_last=1", "train.tensorboard=false"]
    straight = tmp_path / "straight"
    # The uninterrupted run here (it also imports once what the forked runs then share), counting its writes.
    real_replace, writes = os.replace, []
    monkeypatch.setattr(os, "replace", lambda src, dst: (writes.append(dst), real_replace(src, dst))[1])
    train(tiny_config(synth, straight, *common))
    monkeypatch.undo()
    writes = len(writes)
    assert writes >= 3 + 2 * 2  # config.yaml, the two logs; per epoch its checkpoint and state (+ best.pt)
    reference_log = read_csv(straight / "train_log.csv")
    reference_epochs = [{k: r[k] for k in ("epoch", "iteration", "mean_loss", "miou", "checkpoint")}
                        for r in read_csv(straight / "epochs.csv")]
    for n in range(1, writes + 1):
        run = tmp_path / f"killed_at_{n}"
        status, _ = run_in_child(lambda run=run: train(tiny_config(synth, run, *common)), kill_at_write=n)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, n
        if not run.exists():
            continue
        (run / ".notes.txt.tmp").write_text("mine")  # a file the run did not write: it stays
        status, _ = run_in_child(lambda run=run: train(tiny_config(synth, run, *common, "train.resume=auto")))
        assert status == 0, n
        assert read_csv(run / "train_log.csv") == reference_log, n
        epochs = [{k: r[k] for k in ("epoch", "iteration", "mean_loss", "miou", "checkpoint")}
                  for r in read_csv(run / "epochs.csv")]
        assert epochs == reference_epochs, n
        state = torch.load(state_path_for(run / "epoch_0002.pt"), weights_only=True)
        best = load_checkpoint(run / "best.pt")[1].extra["training"]
        assert (best["epoch"], best["miou"]) == (state["best"]["epoch"], state["best"]["miou"]), n
        assert best["miou"] == pytest.approx(max(float(r["miou"]) for r in epochs), abs=1e-6), n
        assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == [".notes.txt.tmp"], n


def test_a_failed_start_writes_nothing_and_a_new_run_never_replaces_another(synth, tmp_path):
    out = tmp_path / "out"
    bad = subprocess.run([sys.executable, "-m", "sigma_core.cli.train", *TINY, f"data.root={synth}",
                          f"train.out_dir={out}", "data.batch_size=1000"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "fewer than one batch" in bad.stderr and not out.exists()
    out.mkdir()
    (out / "epochs.csv").write_text("epoch\n1\n")
    again = subprocess.run([sys.executable, "-m", "sigma_core.cli.train", *TINY, f"data.root={synth}",
                            f"train.out_dir={out}", "schedule.epochs=1", "schedule.warmup_epochs=0"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "--resume auto" in again.stderr and again.stderr.count("\n") == 1
    assert (out / "epochs.csv").read_text() == "epoch\n1\n" and sorted(p.name for p in out.iterdir()) == ["epochs.csv"]
    # a file where the run folder would go: one line naming it, not a NotADirectoryError traceback
    blocked = subprocess.run([sys.executable, "-m", "sigma_core.cli.train", *TINY, f"data.root={synth}",
                              f"train.out_dir={out / 'epochs.csv' / 'run'}", "schedule.epochs=1",
                              "schedule.warmup_epochs=0"],
                             capture_output=True, text=True, timeout=120)
    assert blocked.returncode == 1 and blocked.stderr.count("\n") == 1 and "is a file" in blocked.stderr


def test_no_weight_decay_follows_the_tags_the_model_declares():
    from sigma_core.engine.builders import build_model
    from sigma_core.engine.train import parameter_groups

    model = build_model(TrainConfig.load(None, TINY), len(CLASSES))
    decay, no_decay = parameter_groups(model, 0.01)
    tagged = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    leaves = {n.rsplit(".", 1)[-1] for n in tagged}
    assert leaves == {"A_logs", "Ds", "A_log_1", "A_log_2", "D_1", "D_2"}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in no_decay_ids) == (name in tagged or p.ndim <= 1), name
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01
    assert any(p.ndim > 1 for p in no_decay["params"])  # the 2-D A_log matrices, by their tag


def test_start_up_summary_crop_from_the_dataset_and_a_memory_warning(synth, tmp_path, capsys, monkeypatch):
    """The custom preset's 480x640 crop on 32x48 frames trains at 32x48 (the size dataset.yaml records); with too
    little memory free the run warns with settings that fit before its first iteration; resuming says so."""
    import sigma_core.engine.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 80 * 2**20)
    args = ["data.crop_size=[480,640]", "schedule.warmup_epochs=0", "data.limit=8", "eval.limit=2",
            "data.batch_size=8"]
    train(tiny_config(synth, tmp_path / "run", *args, "schedule.epochs=1"))
    out, err = capsys.readouterr()
    assert "crop 32x48, batch 8" in out and "8 training images" in out and "2 validation images" in out
    assert "device cpu, 1 threads" in out and "starting at epoch 1 of 1" in out
    assert "warning: training needs about" in err and "80 MiB are available" in err
    assert re.search(r"settings that fit: data\.batch_size=\d", err), err
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 64 * 2**30)
    train(tiny_config(synth, tmp_path / "run", *args, "schedule.epochs=2", "train.resume=auto"))
    out, err = capsys.readouterr()
    assert "resumed from epoch 1" in out and "best val mIoU" in out and "1 epochs to go" in out and not err


def test_an_empty_validation_split_stops_training_before_it_starts(tmp_path):
    root = write_dataset(tmp_path / "no_test", n=8, seed=1, size=(32, 48), test_fraction=0.0)
    assert (root / "test.txt").read_text().split() == []
    with pytest.raises(ValueError, match=r"split 'test' holds no images.*--test-fraction.*no best\.pt can be chosen"):
        train(tiny_config(root, tmp_path / "run", "schedule.epochs=1", "schedule.warmup_epochs=0"))
    assert not (tmp_path / "run").exists()


def test_a_short_run_of_a_preset_clamps_its_warm_up_and_workers_fit_the_cpus(capsys):
    """Issue 22: `schedule.epochs=1` on the custom preset (5 warm-up epochs) was an error; num_workers 4 on a
    2-core machine made PyTorch warn at every validation."""
    from sigma_core.engine.config import usable_workers

    cfg = TrainConfig.load("custom", ["schedule.epochs=1"])
    assert cfg.schedule.warmup_epochs == 1
    assert "schedule.warmup_epochs 5 is more than schedule.epochs 1" in capsys.readouterr().err
    assert usable_workers(10_000) == len(os.sched_getaffinity(0)) and usable_workers(0) == 0


def test_workers_fit_the_cpus_of_the_process_affinity_mask_not_the_machine(monkeypatch):
    from sigma_core.engine.config import usable_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {1, 3})  # taskset -c 1,3 on a bigger machine
    assert usable_workers(8) == 2 and usable_workers(1) == 1 and usable_workers(0) == 0


@pytest.mark.parametrize("name", ["nyudv2", "nyudepthv2", "NYU-Depth-v2", "nyu"])
def test_training_presets_take_the_dataset_names_every_tool_takes(name):
    """Issue 22: `sigma-train --config nyudepthv2` was unknown while `sigma-import --dataset nyudv2` worked."""
    assert TrainConfig.load(name).data.preset == "nyudv2"


@pytest.mark.slow
def test_training_without_a_validation_split_when_asked_gives_the_last_epoch_as_best(tmp_path):
    """Issue 21, fault 7: a dataset extracted with --test-fraction 0 (every label in train) could not be trained on
    (no test split, refused). With data.val_split=null it is, and best.pt holds the last epoch."""
    root = write_dataset(tmp_path / "all_train", n=8, seed=4, size=(32, 48), test_fraction=0.0)
    args = [sys.executable, "-m", "sigma_core.cli.train", *TINY, f"data.root={root}", "schedule.epochs=1",
            "schedule.warmup_epochs=0"]
    refused = subprocess.run([*args, f"train.out_dir={tmp_path / 'refused'}"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 1 and "data.val_split=null" in refused.stderr, refused.stderr
    run = subprocess.run([*args, f"train.out_dir={tmp_path / 'run'}", "data.val_split=null"], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr
    assert "no validation (data.val_split null): best.pt is the last epoch" in run.stdout
    assert load_checkpoint(tmp_path / "run" / "best.pt")[1].extra["training"]["epoch"] == 1
