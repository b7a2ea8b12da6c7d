"""YAML loading that remembers the line of every value, so config errors can name it.

Stricter than `yaml.safe_load` on purpose: a plant file is edited by hand, so anything
that would silently change a value is an error with the file and the line:
- a key given twice in one mapping (safe_load keeps the last one, so an ideal cycle time
  could change unnoticed);
- a merge key (`<<: *anchor`): its override rules are easy to misread, write the values out;
- a key that is not a plain value (a list or a mapping used as a key);
- aliases that expand to a huge document (the "billion laughs").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
# A hand-written plant file has a few thousand values; aliases can multiply a small text
# into billions of them, so expansion stops well above any real plant.
MAX_VALUES = 200_000


class YamlError(ValueError):
    def __init__(self, file: Path, line: int | None, message: str) -> None:
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {message}")
        self.file = file
        self.line = line
        self.message = message


def load_with_lines(file: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse `file`; return the data and a map from each value's path to its 1-based line."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as err:
        raise YamlError(file, None, f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise YamlError(file, None, f"not UTF-8 text (byte {err.start})") from None
    return loads_with_lines(text, file)


def loads_with_lines(text: str, file: Path) -> tuple[Any, dict[Path_, int]]:
    """`load_with_lines` of a text already read; `file` only names it in errors."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        raise YamlError(file, _line(mark), f"not valid YAML: {err.problem}") from None
    except yaml.YAMLError as err:  # e.g. a character YAML does not allow, without a mark
        raise YamlError(file, None, f"not valid YAML: {err}") from None
    except RecursionError:
        raise YamlError(file, None, "not valid YAML: nested too deeply") from None
    lines: dict[Path_, int] = {}
    if node is None:
        return None, lines
    builder = _Builder(file, lines)
    try:
        return builder.build(node, ()), lines
    except RecursionError:
        raise YamlError(file, None, "nested too deeply") from None


def _line(mark: yaml.Mark | None) -> int | None:
    return mark.line + 1 if mark is not None else None


class _Builder:
    def __init__(self, file: Path, lines: dict[Path_, int]) -> None:
        self.file = file
        self.lines = lines
        self.count = 0

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise YamlError(
                self.file, _line(node.start_mark), f"more than {MAX_VALUES} values (alias bomb?)"
            )
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == _MERGE_TAG:
                    raise YamlError(
                        self.file,
                        line,
                        "merge keys (<<) are not supported: write the values out in full",
                    )
                if not isinstance(key_node, yaml.ScalarNode):
                    raise YamlError(self.file, line, "a key must be a plain value")
                key = self.scalar(key_node)
                try:
                    duplicate = key in out
                except TypeError:  # an unhashable key, e.g. a tagged set
                    raise YamlError(self.file, line, "a key must be a plain value") from None
                if duplicate:
                    where = ".".join(str(p) for p in (*path, key))
                    raise YamlError(
                        self.file,
                        line,
                        f"{where}: duplicate key (first given on line {self.lines[(*path, key)]})",
                    )
                out[key] = self.build(value_node, (*path, key))
                self.lines[(*path, key)] = line
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def scalar(self, node: yaml.Node) -> Any:
        try:
            return yaml.SafeLoader("").construct_object(node, deep=True)
        except yaml.MarkedYAMLError as err:  # an unknown tag, a bad !!timestamp, ...
            mark = err.problem_mark or err.context_mark or node.start_mark
            raise YamlError(self.file, _line(mark), f"not valid YAML: {err.problem}") from None
        except (ValueError, OverflowError) as err:  # e.g. !!timestamp 2024-13-45
            raise YamlError(self.file, _line(node.start_mark), f"not valid YAML: {err}") from None
        except (IndexError, KeyError, AttributeError, TypeError):
            # PyYAML's constructors crash on an explicitly tagged value they cannot read
            # (`!!int ""`, `!!bool ""`, `!!timestamp x`): the same error, not a traceback.
            tag = node.tag.rsplit(":", 1)[-1]
            raise YamlError(
                self.file, _line(node.start_mark), f"not valid YAML: {node.value!r} is not a {tag}"
            ) from None


def line_of(lines: dict[Path_, int], loc: Path_) -> int | None:
    """The line of the deepest known prefix of `loc` (a missing field points at its parent)."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
