"""The README's first command (``make demo``): the whole system on a synthetic bag, live, with a report.

Steps: (1) record a few seconds of the synthetic RGB-thermal (``--modality depth``: RGB-depth) street world
to a bag (RGB 30 Hz, thermal or depth 9 Hz with jittered stamps, a label topic; depth also a CameraInfo);
(2) start the segmentation node in its own process with the bundled model of that modality;
(3) wait until it is ready (its latched class map arrives); (4) replay the bag
into the ROS graph with ``bag_player`` (original timing); (5) measure with the
replay evaluator in this process (latency, drops, accuracy against the labels);
(6) stop the node, write the report, the overlay frames and the logs to the
output folder and print the summary.

It uses a private ``ROS_DOMAIN_ID`` unless one is set, and the shipped Fast DDS
profile for camera-sized messages unless ``FASTDDS_DEFAULT_PROFILES_FILE`` is
set. Exit status: 0 when masks came back and the node ran cleanly, 1 when the
pipeline failed (the message says where; the logs are in the output folder).

    python -m sigma_ros.replay.demo [--seconds 6] [--output demo_output] [--rate 1.0] [--night] [--modality depth]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError
from ..package_files import fastdds_profile_env

DEFAULT_OUTPUT = Path("demo_output")
# What a demo run writes into its output folder (nothing else there is touched).
OUTPUTS = ("node.log", "player.log", "synthetic_bag", "overlays", "summary.json", "latency.png", "class_iou.png",
           "frames.png", "report.md", "report.html")
MANIFEST = ".sigma_demo_files"  # what the last demo run in this folder wrote, so the next one may remove it


class DemoError(RuntimeError):
    """The pipeline failed; the message says at which step and where the logs are."""


def prepare_environment(env: dict) -> dict:
    """Private ROS_DOMAIN_ID, the Fast DDS profile and one torch thread (unless the user set them), in place."""
    if not env.get("ROS_DOMAIN_ID"):
        # 30..99: within ROS's documented safe range on Linux (0-101) and clear of the default 0
        env["ROS_DOMAIN_ID"] = str(30 + os.getpid() % 70)
    # Node, player and evaluator share the CPU here; competing OpenMP threads stall each other (measured on 2 cores:
    # nano forward p50 285 ms with torch's default threads, 118 ms with one, and 50 instead of 22 of 54 pairs).
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(fastdds_profile_env(env))
    return env


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> Optional[int]:
    """SIGINT, then SIGKILL after ``timeout`` s; returns the exit code (None if it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        return None


def _manifest_entries(out: Path) -> tuple[list[str], bool]:
    """(paths relative to ``out`` a previous demo run wrote, whether that run finished listing them)."""
    path = out / MANIFEST
    if not path.is_file():
        return [], True
    lines = path.read_text().splitlines()
    complete = bool(lines) and lines[0] == "complete"
    return [line for line in lines[1:] if line and not line.startswith(("/", ".."))], complete


def _write_manifest(out: Path, entries: list[str], complete: bool) -> None:
    from sigma_core.files import atomic_write_text

    atomic_write_text(out / MANIFEST, "\n".join(["complete" if complete else "started", *entries]) + "\n")


def prepare_output(out: Path) -> set[str]:
    """Make ``out`` ready for a demo run without touching anything the demo did not write.

    The previous demo run's files (listed in MANIFEST) are removed; any other file is left alone, and a
    file of the user's where the demo would write (e.g. their own report.md) stops the run with DemoError.
    Returns the paths (relative to ``out``) already there, which record_output leaves out.
    """
    if out.exists() and not out.is_dir():
        raise DemoError(f"--output {out} is a file, not a folder; give a folder for the report, overlays and logs")
    entries, complete = _manifest_entries(out)
    for rel in sorted(entries, key=lambda r: r.count("/"), reverse=True):  # files first, then their folders
        path = out / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
        elif path.is_dir():
            if complete:
                try:
                    path.rmdir()  # only when empty: a file someone added stays
                except OSError:
                    pass
            else:  # listed by a run killed before it listed its files: the folder did not exist before that run
                shutil.rmtree(path)
    (out / MANIFEST).unlink(missing_ok=True)
    # A folder of the user's may receive the demo's files (overlays/), except the bag's, which must be new.
    theirs = [name for name in OUTPUTS
              if (out / name).exists() and (name == "synthetic_bag" or not (out / name).is_dir())]
    if theirs:
        raise DemoError(f"{out} holds {', '.join(theirs)}, which the demo did not write; it never replaces files "
                        "it did not write: choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    before = {str(p.relative_to(out)) for p in out.rglob("*")}
    # What this run may create, in case it is killed before record_output lists what it did create.
    _write_manifest(out, [name for name in OUTPUTS if name not in before], complete=False)
    return before


def record_output(out: Path, before: set[str]) -> None:
    """List in MANIFEST every file and folder of OUTPUTS under ``out`` that is not in ``before``."""
    entries = []
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            entries += [str(p.relative_to(out)) for p in sorted(path.rglob("*"))]
        if path.exists():
            entries.append(name)
    _write_manifest(out, [e for e in entries if e not in before], complete=True)


def run_demo(args: argparse.Namespace) -> int:
    from sigma_core.data.synthetic import TOPICS, write_bag
    from sigma_core.onnx_runtime import is_onnx_path

    from ..node.parameters import device as device_parameter
    from ..node.parameters import resolve_checkpoint

    # Arguments first: a bad one must fail before anything is written.
    checkpoint = resolve_checkpoint(args.checkpoint, args.modality)  # fails early, naming a missing model
    device = device_parameter("--device", args.device)
    if not is_onnx_path(checkpoint):  # an .onnx file's device is ONNX Runtime's (the node picks the provider)
        from sigma_core.inference import resolve_device

        device = str(resolve_device(device))
    rgb_topic, modal_topic, label_topic = TOPICS["rgb"], TOPICS[args.modality], TOPICS["label"]
    out = Path(args.output)
    before = prepare_output(out)
    try:
        return _run_pipeline(args, out, checkpoint, device, (rgb_topic, modal_topic, label_topic), write_bag)
    finally:
        record_output(out, before)


def _run_pipeline(args: argparse.Namespace, out: Path, checkpoint: Path, device: str, topics: tuple[str, str, str],
                  write_bag) -> int:
    from sigma_core.data.synthetic import TOPICS

    rgb_topic, modal_topic, label_topic = topics
    env = prepare_environment(os.environ)  # this process too: rclpy reads both when it starts
    _log(f"output folder {out.resolve()} (ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, "
         f"Fast DDS profile {env['FASTDDS_DEFAULT_PROFILES_FILE']})")
    started = time.perf_counter()

    # 1. The node, in its own process as on a robot; it loads the model while the bag is recorded.
    node_log = out / "node.log"
    node_cmd = [
        sys.executable, "-m", "sigma_ros.node", "--ros-args",
        "-p", f"checkpoint:={checkpoint}", "-p", f"device:={device}",
        *(["-p", f"dataset:={args.dataset}"] if args.dataset else []),
        "-p", f"sync.slop:={args.slop}", "-p", f"sync.queue_size:={args.queue_size}",
        # Warm up at the bag's size (the default, 480x640, takes tens of seconds on a small CPU).
        "-p", f"warmup.size:=[{args.size[0]}, {args.size[1]}]",
        "-p", f"modality:={args.modality}",
        # The node starts before the bag is recorded and replayed: a normal run must not warn of silent cameras.
        "-p", "input.silent_warning_s:=30.0",
        "-r", f"rgb/image:={rgb_topic}", "-r", f"modal/image:={modal_topic}",
        *(["-r", f"modal/camera_info:={TOPICS['camera_info']}"] if args.modality == "depth" else []),
    ]
    with open(node_log, "w") as log_file:
        node = subprocess.Popen(node_cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    _log(f"1/5 started the node (pid {node.pid}) with {checkpoint.name} ({args.modality}) on {device}; "
         f"log {node_log}")

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from .live_evaluator import EvaluatorOptions, ReplayEvaluator
    from .report import format_summary, write_report

    rclpy.init()
    evaluator = None
    executor = SingleThreadedExecutor()
    stop = threading.Event()
    spinner = None
    player = None
    try:
        # 2. The synthetic bag.
        bag_path = out / "synthetic_bag"
        t0 = time.perf_counter()
        record = write_bag(bag_path, storage="sqlite3", seconds=args.seconds, seed=args.seed, night=args.night,
                           size=tuple(args.size), modality=args.modality)
        if (record.rgb_topic, record.modal_topic, record.label_topic) != (rgb_topic, modal_topic, label_topic):
            raise DemoError(f"the synthetic bag's topics {record.rgb_topic}, {record.modal_topic}, "
                            f"{record.label_topic} differ from the ones the node listens to")
        _log(f"2/5 recorded {args.seconds:g} s of the synthetic RGB-{args.modality} world "
             f"({'night' if args.night else 'day'}) to "
             f"{bag_path}: {len(record.messages)} messages on {rgb_topic}, {modal_topic}, {label_topic} "
             f"in {time.perf_counter() - t0:.1f} s")

        evaluator = ReplayEvaluator(EvaluatorOptions(
            rgb_topic=record.rgb_topic, modal_topic=record.modal_topic, label_topic=record.label_topic,
            slop=args.slop, queue_size=args.queue_size, overlay_dir=out / "overlays", samples=6,
        ))
        executor.add_node(evaluator)
        spinner = threading.Thread(target=lambda: _spin(executor, stop), name="evaluator", daemon=True)
        spinner.start()

        # 3. Ready when the latched class map arrives (published after the model's warm-up).
        deadline = time.monotonic() + args.startup_timeout
        while not evaluator.class_map_event.wait(0.2):
            if node.poll() is not None:
                raise DemoError(f"the node exited with code {node.returncode} during start-up:\n{_tail(node_log)}")
            if time.monotonic() > deadline:
                raise DemoError(f"the node was not ready after {args.startup_timeout:.0f} s:\n{_tail(node_log)}")
        _log(f"3/5 node ready after {time.perf_counter() - started:.1f} s: classes {', '.join(evaluator.class_names)}")

        # 4. Replay the bag live, in its own process (timing undisturbed by the evaluator).
        player_log = out / "player.log"
        topics = [record.rgb_topic, record.modal_topic, record.label_topic,
                  *([record.camera_info_topic] if record.camera_info_topic else [])]
        player_cmd = [sys.executable, "-m", "sigma_ros.replay.bag_player", str(bag_path), "--rate", str(args.rate),
                      "--topics", *topics, "--wait-timeout", "30",
                      # the node and the evaluator must both hear the first frame
                      "--wait-for-subscribers", f"{rgb_topic}=2", f"{modal_topic}=2", f"{label_topic}=1",
                      "--wait-for-publisher", "/segmentation/class_map"]
        _log(f"4/5 replaying the bag at rate {args.rate:g} ({args.seconds / args.rate:.1f} s); log {player_log}")
        with open(player_log, "w") as log_file:
            player = subprocess.Popen(player_cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            code = player.wait(timeout=args.seconds / args.rate + 60)
        except subprocess.TimeoutExpired:
            raise DemoError(f"the bag player did not finish in time:\n{_tail(player_log)}") from None
        if code != 0:
            raise DemoError(f"the bag player failed (exit code {code}):\n{_tail(player_log)}")

        # 5. Let the last masks arrive: until every pair is answered or nothing came for a while.
        quiet_deadline = time.monotonic() + 20.0
        while time.monotonic() < quiet_deadline and not evaluator.all_answered() and evaluator.idle_for() < 2.0:
            time.sleep(0.1)
        summary = evaluator.summary()
        unknown_masks = evaluator.unknown_masks
    finally:
        stop.set()
        if spinner is not None:
            spinner.join(timeout=5)
        if player is not None and player.poll() is None:
            _stop(player)
        node_code = _stop(node)
        if evaluator is not None:
            evaluator.destroy_node()
        rclpy.try_shutdown()

    summary.notes += [f"the node warned: {w}" for w in node_warnings(node_log)]  # a normal run has none
    summary.source.update({"bag": str(bag_path), "checkpoint": str(checkpoint), "device": device,
                           "rate": args.rate, "seconds": args.seconds, "seed": args.seed, "night": args.night,
                           "modality": args.modality})
    paths = write_report(summary, out)
    overlays = sorted((out / "overlays").glob("*.png"))
    print()
    print(format_summary(summary))
    print()
    _log(f"5/5 done in {time.perf_counter() - started:.1f} s. Report: {paths['markdown'].resolve()} "
         f"(and {paths['html'].name}); {len(overlays)} overlay frames in {(out / 'overlays').resolve()}")
    if node_code not in (0, -signal.SIGINT):
        raise DemoError(f"the node did not shut down cleanly (exit code {node_code}):\n{_tail(node_log)}")
    if summary.frames == 0:
        raise DemoError(f"no masks came back from the node. Node log:\n{_tail(node_log)}")
    if unknown_masks:
        raise DemoError(f"{unknown_masks} masks came back with the stamp of no replayed RGB frame")
    return 0


_NODE_WARNING = re.compile(r"^\[(?:WARN|ERROR)\] \[[^\]]*\] \[[^\]]*\]: (.*)$")


def node_warnings(log: Path, limit: int = 5) -> list[str]:
    """The distinct warnings and errors in a node log (rclpy's console format), first ``limit``, in order: a
    thermal checkpoint run with --modality depth is said in the node's log, and the demo's report must say it."""
    found: list[str] = []
    for line in log.read_text(errors="replace").splitlines() if log.is_file() else []:
        match = _NODE_WARNING.match(line.strip())
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found[:limit]


def _spin(executor, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.1)
        except Exception:  # shutdown races at the end
            if stop.is_set():
                return
            raise


def build_parser() -> argparse.ArgumentParser:
    from sigma_core.cli.errors import DefaultsHelpFormatter

    p = argparse.ArgumentParser(prog="sigma-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--seconds", type=float, default=6.0, help="length of the synthetic recording (s)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help="folder for the report, overlays and logs; a rerun replaces only what the demo wrote")
    p.add_argument("--rate", type=float, default=1.0, help="replay speed factor")
    p.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    p.add_argument("--night", action="store_true", help="a night scene (dark, noisy RGB; thermal/depth matter)")
    p.add_argument("--modality", choices=("thermal", "depth"), default="thermal",
                   help="the second camera of the synthetic bag (and the bundled model that fits it)")
    p.add_argument("--size", type=int, nargs=2, default=(120, 160), metavar=("H", "W"), help="image size")
    p.add_argument("--checkpoint", default="", help="Sigma checkpoint (default: the bundled demo model of --modality)")
    p.add_argument("--dataset", default="", help="a published Sigma checkpoint's dataset (mfnet, pst900, ...)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N (an .onnx checkpoint also tensorrt, tensorrt:N)")
    p.add_argument("--slop", type=float, default=0.05, help="the node's sync.slop (s)")
    p.add_argument("--queue-size", type=int, default=10, help="the node's sync.queue_size")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for the node")
    return p


DEMO_MAX_SIDE = 2048  # pixels: the synthetic recording is rendered in memory before it plays


def check_arguments(args: argparse.Namespace) -> None:
    """ConfigError naming the first argument the demo or its node would refuse, before anything starts (the node
    checks --size, --slop and --queue-size with its own parameter parsers)."""
    from ..node.parameters import image_size, positive, positive_integer

    if not args.seconds > 0 or not args.rate > 0:
        raise ConfigError(f"--seconds and --rate must be > 0, got {args.seconds:g} and {args.rate:g}")
    try:
        image_size("--size", list(args.size))
        positive("--slop", args.slop)
        positive_integer("--queue-size", args.queue_size)
    except ConfigError as e:
        raise ConfigError(str(e).replace("parameter --", "--")) from None
    if max(args.size) > DEMO_MAX_SIDE:
        raise ConfigError(f"--size must be at most {DEMO_MAX_SIDE} pixels a side for the demo's synthetic recording "
                          f"(rendered in memory), got {args.size[0]} {args.size[1]}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
    except ConfigError as e:
        print(f"sigma-demo: {e}", file=sys.stderr)
        return 2
    from .. import ros_env  # noqa: F401  (before rclpy: the pip ROS wheels' library path)

    try:
        return run_demo(args)
    except DemoError as e:
        print(f"[demo] FAILED: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[demo] interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # ConfigError (checkpoint), missing files
        print(f"[demo] FAILED: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
