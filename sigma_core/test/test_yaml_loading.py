"""Bounded YAML reading (sigma_core.yaml_loading) and the files that go through it."""
import subprocess
import sys

import pytest
import yaml

from sigma_core.data.labels import check_class_names
from sigma_core.yaml_loading import MAX_NODES, YamlTooLargeError, load_yaml


def _laughs(levels: int) -> str:
    """'Billion laughs': each anchor aliases the one before nine times; 9^levels strings once expanded."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{k}: &l{k} [" + ",".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, levels)]
    return "\n".join(lines + [f"classes: *l{levels - 1}"]) + "\n"


def test_aliases_and_ordinary_documents_load_as_safe_load_does():
    text = "a: &x [1, 2]\nb: *x\nc: {d: *x, e: 6e-5, f: null}\n"
    assert load_yaml(text) == yaml.safe_load(text)
    assert load_yaml("") is None
    assert load_yaml(_laughs(5)) == yaml.safe_load(_laughs(5))  # 9^5 = 59,049 strings: within the bound


def test_billion_laughs_deep_nesting_and_self_aliases_are_refused():
    """Issue 21 attack (second pass): a 400-byte dataset.yaml of 9^8 aliased class names took sigma-evaluate 46 s and
    5 GB to print a 312 MB error line; 200,000 nested brackets were a bare 'maximum recursion depth' line."""
    with pytest.raises(YamlTooLargeError, match=rf"expand to [0-9,]+ values, above the limit of {MAX_NODES:,}"):
        load_yaml(_laughs(7))
    with pytest.raises(YamlTooLargeError, match="nests deeper"):
        load_yaml("classes: " + "[" * 100_000 + "]" * 100_000)
    for endless in ("a: &a [*a]", "a: &a {b: *a}"):
        with pytest.raises(YamlTooLargeError, match="alias of itself"):
            load_yaml(endless)
    assert isinstance(YamlTooLargeError("x"), yaml.YAMLError)  # every caller's YAML error handling applies


def test_class_names_must_be_text_not_lists():
    check_class_names(["road", 1, 2.5], "classes.yaml")  # numbers are names too
    with pytest.raises(ValueError, match=r"classes\.yaml: class names must be text, but id 1 is a list \(2 items\)"):
        check_class_names(["road", ["car", "bus"]], "classes.yaml")


def test_sigma_evaluate_refuses_a_billion_laughs_dataset_yaml_in_one_line(tmp_path):
    """In a real process: one line naming the file and the reason, exit non-zero, at once."""
    from importlib.resources import files

    (tmp_path / "dataset.yaml").write_text(_laughs(7))
    checkpoint = files("sigma_core.assets") / "sigma_nano_synthetic.pt"
    run = subprocess.run([sys.executable, "-m", "sigma_core.cli.evaluate", str(checkpoint), "--data-root",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1 and len(lines[0]) < 600, run.stderr[:2000]
    assert "dataset.yaml" in lines[0] and "aliases expand to" in lines[0], lines[0]
