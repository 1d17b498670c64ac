"""Reading a plan's YAML defensively: a plan is input from anyone, so its size, nesting, alias
expansion and integers are bounded before anything is built from it, and a key given twice is
an error instead of the last one silently winning.

PyYAML's safe loader shares one node for every use of an alias, so a 1 kB "billion laughs" file
composes instantly and only explodes when something walks it (pydantic's validation, a dump):
the expanded size is therefore counted while composing, from each node's own size, in time
linear in the file. Nesting is bounded before Python's recursion limit is anywhere near, and
integers by digits before Python's int conversion refuses them with a bare ValueError.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_PLAN_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_VALUES = 100_000  # scalars and collections, every alias use counted in full
MAX_INT_DIGITS = 30
_INT_TAG = "tag:yaml.org,2002:int"


class PlanYamlError(Exception):
    """Input a plan must not contain: the message names where (line, column, field path)."""


def _describe(path: list[str]) -> str:
    if not path:
        return "the top level"
    text = ""
    for part in path:
        text += part if part.startswith("[") or not text else f".{part}"
    return text if len(path) <= 12 else f"{text[:160]}..."


class _PlanLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        super().__init__(stream)
        self._path: list[str] = []
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        pushed = self._push(parent, index)
        if len(self._path) > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise PlanYamlError(
                f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels (at {_describe(self._path[:8])}...); "
                "a plan is a few levels deep"
            )
        try:
            node = super().compose_node(parent, index)
            if node is not None:
                self._measure(node)  # while the path still names this node
        finally:
            if pushed:
                self._path.pop()
        return node

    def _push(self, parent: Node | None, index: Any) -> bool:
        if isinstance(parent, MappingNode) and isinstance(index, ScalarNode):
            self._path.append(str(index.value))
            return True
        if isinstance(parent, SequenceNode) and isinstance(index, int):
            self._path.append(f"[{index}]")
            return True
        return False

    def _measure(self, node: Node) -> None:
        if id(node) in self._sizes:  # an alias: the anchored node, already measured
            return
        if isinstance(node, ScalarNode):
            size = 1
            if node.tag == _INT_TAG and len(node.value.lstrip("+-").replace("_", "")) > MAX_INT_DIGITS:
                raise PlanYamlError(
                    f"line {node.start_mark.line + 1}: {_describe(self._path)}: an integer of "
                    f"{len(node.value)} digits; plans take integers of at most {MAX_INT_DIGITS} digits"
                )
        elif isinstance(node, SequenceNode):
            size = 1 + sum(self._sizes.get(id(child), 1) for child in node.value)
        else:
            self._check_duplicates(node)
            size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        if size > MAX_VALUES:
            raise PlanYamlError(
                f"line {node.start_mark.line + 1}: {_describe(self._path)} expands to more than "
                f"{MAX_VALUES:,} values (YAML aliases counted at every use); a plan is far smaller"
            )
        self._sizes[id(node)] = size

    def _check_duplicates(self, node: Node) -> None:
        seen: dict[Any, int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if key.value in seen:
                where = _describe([*self._path, str(key.value)])
                raise PlanYamlError(
                    f"{where}: the key `{key.value}` is given twice (line {seen[key.value]} and line {line}); "
                    "YAML would silently keep the last one"
                )
            seen[key.value] = line


def load_plan_yaml(text: str) -> Any:
    """The plan's YAML as Python values; PlanYamlError for input past the bounds above,
    yaml.YAMLError for a syntax error."""
    size = len(text.encode("utf-8"))
    if size > MAX_PLAN_BYTES:
        raise PlanYamlError(f"the file is {size:,} bytes; a plan is at most {MAX_PLAN_BYTES:,} bytes")
    loader = _PlanLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
