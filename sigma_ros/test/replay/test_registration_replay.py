"""Registration in offline replay: on a synthetic street scene recorded by an aligned and a separate rig (same
RGB frames and labels), the bundled demo model with the separate rig's calibration scores like the aligned rig,
and clearly above stretching the thermal image (what the node did before). Small images, few frames; the
full-size numbers come from benchmarks/registration_miou.py."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")

from sigma_core.data.calibration import load_calibration  # noqa: E402
from sigma_core.data.registration import Registration  # noqa: E402
from sigma_core.data.synthetic import write_bag  # noqa: E402
from sigma_core.data.synthetic_rig import separate_rig  # noqa: E402
from sigma_ros.replay.replay_eval import ReplayOptions, main, replay_bag  # noqa: E402
from sigma_ros.segmentation_step import load_segmenter  # noqa: E402


def test_registered_separate_rig_scores_like_the_aligned_rig_and_above_stretching(tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    rig = separate_rig((120, 160), (96, 120), baseline_m=0.06)  # 4:3 RGB, 5:4 thermal with its own lens
    kwargs = dict(seconds=1.2, seed=4, modality="thermal", rgb_hz=10.0, modal_hz=5.0)
    aligned = write_bag(tmp_path / "aligned", size=(120, 160), **kwargs)
    separate = write_bag(tmp_path / "separate", rig=rig, **kwargs)
    seg = load_segmenter("", "cpu")  # the bundled demo model, trained on aligned synthetic scenes
    registration = Registration("rig", load_calibration(f"{separate.path}.rig.yaml"), seg.scaling)

    def miou(bag, registration=None):
        out = replay_bag(ReplayOptions(bag.path, bag.rgb_topic, bag.modal_topic, label_topic=bag.label_topic,
                                       registration=registration), seg)
        assert out.summary.frames_scored >= 5
        return out.summary.metrics.miou, out.summary

    reference, _ = miou(aligned)
    registered, summary = miou(separate, registration)
    stretched, plain = miou(separate)
    assert registered >= reference - 0.03, (reference, registered, stretched)
    assert stretched <= registered - 0.08, (reference, registered, stretched)
    assert summary.source["registration"] == "rig" and summary.to_dict()["modality_coverage"]["count"] >= 5
    assert any("two different cameras" in note for note in plain.notes)  # stretching is never silent

    # the command line: --calibration; the registration and its coverage in summary.json
    rc = main([str(separate.path), "--rgb-topic", separate.rgb_topic, "--modal-topic", separate.modal_topic,
               "--label-topic", separate.label_topic, "--calibration", f"{separate.path}.rig.yaml",
               "--out", str(tmp_path / "report"), "--no-html", "--max-pairs", "2"])
    report = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert rc == 0 and report["source"]["registration"] == "rig" and report["modality_coverage"]["count"] == 2
    capsys.readouterr()
    rc = main([str(separate.path), "--rgb-topic", separate.rgb_topic, "--modal-topic", separate.modal_topic,
               "--calibration", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.yaml" in err[0] and "does not exist" in err[0]
