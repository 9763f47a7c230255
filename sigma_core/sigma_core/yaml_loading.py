"""YAML read with bounds: a few hundred bytes cannot stand for billions of values or nest past Python's stack.

PyYAML's ``safe_load`` shares an anchored value at each of its aliases, so loading "billion laughs" (anchors
that alias the previous one nine times, eight deep) is cheap, but anything that then walks the value, a
check or an error message printing it, meets 9^8 items: a 400-byte dataset.yaml with such a class list took
sigma-evaluate 46 s and 5 GB to print a 312 MB error line. And 200,000 nested brackets end PyYAML's
recursive composer in a RecursionError. :func:`load_yaml` refuses both as :class:`YamlTooLargeError`, a
``yaml.YAMLError``, so every caller's YAML error handling names the file. No torch here: the ONNX-only node
reads calibration YAML through it too.
"""
from __future__ import annotations

from typing import Any

import yaml

MAX_NODES = 1_000_000  # values a document may hold once its aliases are expanded (a big config has thousands)


class YamlTooLargeError(yaml.YAMLError):
    """A YAML document expands (through its aliases) to more than MAX_NODES values, or nests too deep."""


class _BoundedLoader(yaml.SafeLoader):
    def get_single_node(self):
        try:
            node = super().get_single_node()
        except RecursionError:
            raise YamlTooLargeError("it nests deeper than Python's recursion limit allows: refused (a hostile or "
                                    "damaged file)") from None
        if node is not None:
            expanded = _expanded_size(node)
            if expanded > MAX_NODES:
                raise YamlTooLargeError(f"its aliases expand to {expanded:,} values, above the limit of "
                                        f"{MAX_NODES:,}: refused (a 'billion laughs' file, hostile or damaged)")
        return node


def _expanded_size(root: yaml.Node) -> int:
    """The number of nodes ``root`` stands for with every alias expanded (each shared node counted once per use),
    computed once per distinct node, without recursion."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()  # begun, children not yet sized: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        children = _children(node)
        if children_done or not children:
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            open_nodes.discard(id(node))
            continue
        if id(node) in open_nodes:
            raise YamlTooLargeError("a value holds an alias of itself (endless when expanded): refused")
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise YamlTooLargeError("a value holds an alias of itself (endless when expanded): refused")
            if id(child) not in size:
                stack.append((child, False))
    return size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` within the bounds above; YamlTooLargeError (a yaml.YAMLError) beyond them."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
