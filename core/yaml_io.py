"""The one YAML loader of the product: yaml.safe_load, except that a key given twice in one mapping is
an error naming the key and both lines. Plain YAML keeps the last value silently, so a robot YAML with
two `rate_hz:` lines (or a bundle.yaml edited by hand) would run with whichever came last."""

from __future__ import annotations

from typing import Any

import yaml

MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key. A yaml.YAMLError, so every reader's `except yaml.YAMLError` reports it
    with the file name it already adds."""

    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__()
        self.key, self.first_line, self.second_line = key, first_line, second_line

    def __str__(self) -> str:
        return (f"duplicate key {self.key!r} at line {self.first_line} and line {self.second_line} "
                f"(keep one)")


class StrictSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys. Keys brought in by a merge (`<<: *base`) may be
    overridden, as YAML intends; only keys written twice in the same mapping are refused."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise DuplicateKeyError(key, first, line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """yaml.safe_load of `text` with duplicate keys refused (DuplicateKeyError, a yaml.YAMLError)."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
