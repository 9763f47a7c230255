"""--help of the console scripts shows the defaults (issue 22: sigma-synth, replay_evaluator and sigma-replay-eval
did not)."""
import pytest


def _help(build_parser, *argv):
    parser = build_parser()
    if argv:  # a sub-command's parser
        parser = parser._subparsers._group_actions[0].choices[argv[0]]
    return " ".join(parser.format_help().split())


def test_help_shows_the_defaults():
    from sigma_core.cli.predict import build_parser as predict
    from sigma_core.cli.synth import build_parser as synth
    from sigma_ros.replay.demo import build_parser as demo
    from sigma_ros.replay.replay_eval import build_parser as replay_eval

    assert "--modal-hz MODAL_HZ (default: 9.0)" in _help(synth, "bag")
    assert "--n N number of images (default: 200)" in _help(synth, "dataset")
    assert "(the same seed writes the same files) (default: 0)" in _help(synth, "dataset")  # 0 == False: was hidden
    assert "--slop SLOP pairing slop in seconds (the node's sync.slop) (default: 0.05)" in _help(replay_eval)
    assert "--modality {thermal,depth}" in _help(demo) and "(default: thermal)" in _help(demo)
    assert "--overlay-alpha OVERLAY_ALPHA weight of the colour mask in the overlay (default: 0.5)" in _help(predict)


def test_replay_evaluator_help_shows_the_defaults():
    pytest.importorskip("rclpy", reason="needs rclpy (a sourced ROS 2 or the pip wheels via tools/env.sh)")
    pytest.importorskip("sigma_msgs.msg", reason="needs the built sigma_msgs")
    from sigma_ros.replay.live_evaluator import build_parser

    assert "--rgb-topic RGB_TOPIC (default: rgb/image)" in _help(build_parser)
