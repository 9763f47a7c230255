"""The synthetic world: deterministic, geometrically consistent, and built so that fusion matters."""
import numpy as np
import pytest
import yaml

from sigma_core.data.bags import open_bag, stamp_ns
from sigma_core.data.synthetic import CLASS_ID, CLASSES, TOPICS, Intrinsics, Scene, write_bag, write_dataset


def _frames(n=12, night=False, size=(96, 128)):
    return [Scene.random(seed=s, size=size, night=night).render(0.0) for s in range(n)]


def test_deterministic_by_seed():
    a, b = Scene.random(7).render(0.5), Scene.random(7).render(0.5)
    c = Scene.random(8).render(0.5)
    for k in ("rgb", "thermal", "depth", "label"):
        assert np.array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.rgb, c.rgb)
    f = a
    assert f.rgb.shape == (120, 160, 3) and f.rgb.dtype == np.uint8
    assert f.thermal.dtype == np.uint16 and f.depth.dtype == np.uint16 and f.label.dtype == np.uint8
    assert f.label.max() < len(CLASSES)


def test_people_are_warm_and_mannequins_are_not():
    person_k, mannequin_k, air_k = [], [], []
    for seed in range(20):
        scene = Scene.random(seed=seed, size=(96, 128))
        f = scene.render(0.0)
        kelvin = f.thermal / 100.0
        person_k += list(kelvin[f.label == CLASS_ID["person"]])
        mannequin_k += list(kelvin[f.label == CLASS_ID["mannequin"]])
        air_k.append(scene.air_k)
    assert len(person_k) > 100 and len(mannequin_k) > 100
    assert np.median(person_k) > np.median(mannequin_k) + 5.0  # thermal separates the look-alikes
    assert abs(np.median(mannequin_k) - np.median(air_k)) < 5.0


def test_night_rgb_is_dark_and_noisy_but_thermal_is_not():
    day, night = _frames(night=False), _frames(night=True)
    assert np.mean([f.rgb.mean() for f in night]) < 0.35 * np.mean([f.rgb.mean() for f in day])
    # at night people stand out from the road in thermal by well over 10 K
    contrast = [f.thermal[f.label == CLASS_ID["person"]].mean() - f.thermal[f.label == CLASS_ID["road"]].mean()
                for f in night if (f.label == CLASS_ID["person"]).sum() > 20]
    assert len(contrast) >= 5 and np.min(contrast) > 1000  # centi-Kelvin


def test_depth_follows_the_ground_geometry_and_sky_is_invalid():
    f = Scene.random(seed=3, size=(120, 160)).render(0.0)
    cam = Intrinsics.for_size(120, 160)
    sky = (f.label == CLASS_ID["background"]) & (np.arange(120)[:, None] < cam.cy)
    assert sky.sum() > 50 and np.all(f.depth[sky] == 0)
    road_rows = [y for y in range(70, 120) if (f.label[y] == CLASS_ID["road"]).sum() > 5]
    for y in road_rows[::10]:
        expected_m = cam.fy * 1.5 / max(y - cam.cy, 0.5)
        measured_m = np.median(f.depth[y][f.label[y] == CLASS_ID["road"]]) / 1000.0
        assert abs(measured_m - expected_m) < 0.05 * expected_m + 0.05
    # objects stand in front of the facades: depth edges at their outlines
    people = f.label == CLASS_ID["person"]
    if people.any():
        assert np.median(f.depth[people]) < np.median(f.depth[f.label == CLASS_ID["building"]])


def test_write_dataset_layout(tmp_path):
    root = write_dataset(tmp_path / "d", n=8, seed=1, night_fraction=0.5, size=(48, 64), modality="depth")
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    assert desc["classes"] == list(CLASSES) and desc["modality"] == "depth" and len(desc["intrinsics"]) == 9
    names = (root / "train.txt").read_text().split() + (root / "test.txt").read_text().split()
    assert sorted(names) == [f"{i:05d}" for i in range(8)]
    meta = yaml.safe_load((root / "meta.yaml").read_text())
    night_test = set((root / "test_night.txt").read_text().split())
    assert night_test == {n for n in (root / "test.txt").read_text().split() if meta[n]["night"]}
    for sub in ("RGB", "Modal", "Label"):
        assert len(list((root / sub).glob("*.png"))) == 8


def test_bag_timing_labels_and_camera_info(tmp_path):
    rec = write_bag(tmp_path / "b", "mcap", seconds=2.0, seed=2, modality="depth")
    rgb, depth, label = rec.stamps(TOPICS["rgb"]), rec.stamps(TOPICS["depth"]), rec.stamps(TOPICS["label"])
    assert len(rgb) == 60 and len(depth) == 18
    assert abs(np.median(np.diff(sorted(rgb))) - 1 / 30 * 1e9) < 2e6
    assert abs(np.median(np.diff(sorted(depth))) - 1 / 9 * 1e9) < 2e6
    assert np.std(np.diff(sorted(rgb))) > 0  # jittered stamps
    assert label == rgb  # the label topic is stamped exactly like RGB
    logs = [log for log, _, _ in rec.messages]
    assert logs == sorted(logs)
    with open_bag(rec.path) as r:
        conns = [c for c in r.connections if c.topic == TOPICS["camera_info"]]
        infos = [r.deserialize(raw, c.msgtype) for c, _, raw in r.messages(connections=conns)]
    assert len(infos) == 18 and [stamp_ns(m) for m in infos] == depth
    cam = Intrinsics.for_size(120, 160)
    np.testing.assert_allclose(infos[0].k, cam.k)
    assert (infos[0].height, infos[0].width) == (120, 160)


def test_sigma_synth_without_a_command_says_what_to_give_and_describe_feeds_extract(tmp_path, capsys):
    import pytest

    from sigma_core.cli.extract import build_parser as extract_parser
    from sigma_core.cli.synth import main

    with pytest.raises(SystemExit) as stop:
        main([])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "say what to write: dataset" in err and "required: what" not in err
    # the command sigma-extract's help names exists and writes the file it takes
    assert "sigma-synth describe FILE" in " ".join(extract_parser().format_help().split())
    assert main(["describe", str(tmp_path / "classes.yaml")]) == 0
    from sigma_core.data.extraction import load_class_file

    assert "classes" in load_class_file(str(tmp_path / "classes.yaml"))


def test_write_dataset_touches_no_folder_it_did_not_write(tmp_path):
    root = write_dataset(tmp_path / "d", n=3, seed=1, size=(16, 24))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert write_dataset(root, n=3, seed=1, size=(16, 24)) == root  # the same dataset again: fine
    with pytest.raises(ValueError, match="other options"):  # would leave stale images beside the new lists
        write_dataset(root, n=2, seed=1, size=(16, 24))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    user = tmp_path / "mine"
    user.mkdir()
    (user / "train.txt").write_text("thesis_frame\n")
    with pytest.raises(ValueError, match="did not write"):
        write_dataset(user, n=2, seed=1, size=(16, 24))
    assert (user / "train.txt").read_text() == "thesis_frame\n" and not (user / "RGB").exists()


def test_sigma_synth_describe_does_not_overwrite_a_users_file(tmp_path, capsys):
    from sigma_core.cli import synth

    mine = tmp_path / "thesis.txt"
    mine.write_text("chapter 1\n")
    assert synth.main(["describe", str(tmp_path / "world.yaml")]) == 0
    assert synth.main(["describe", str(tmp_path / "world.yaml")]) == 0  # its own output again: fine
    with pytest.raises(SystemExit) as exit_info:
        synth.main(["describe", str(mine)])
    assert exit_info.value.code == 2 and "exists" in capsys.readouterr().err
    assert mine.read_text() == "chapter 1\n"


@pytest.mark.parametrize("args, named", [
    (["dataset", "{out}", "--n", "1", "--size", "100000", "100000"], "--size 100000 100000"),  # was a MemoryError
    (["dataset", "{out}", "--n", "1", "--size", "0", "5"], "--size 0 5"),  # was an OpenCV traceback, folders left
    (["bag", "{out}", "--seconds", "-1"], "--seconds"),  # was an empty bag and exit 0
    (["bag", "{out}", "--rgb-hz", "0"], "--rgb-hz"),
    (["bag", "{out}", "--rig", "--modal-size", "-4", "640"], "--modal-size -4 640"),
    (["target", "{out}", "--views", "0"], "--views"),  # was 0 views and exit 0
])
def test_sigma_synth_refuses_sizes_and_counts_it_cannot_make_in_one_line(tmp_path, args, named):
    """Issue 21 attack (second pass): sigma-synth in a real process, exit 2, one line, nothing written."""
    import subprocess
    import sys

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "sigma_core.cli.synth", *(a.format(out=out) for a in args)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith(f"sigma-synth: error: {named}"), run.stderr
    assert not out.exists()
