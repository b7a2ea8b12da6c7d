"""Property-based fuzzing of the plant-file loader: whatever the file holds, loading it
gives a PlantConfig or a ConfigError naming the file (and a line when there is one),
never another exception, and never a silently different plant.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesflow.plant import ConfigError, PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT

EXAMPLE_TEXT = (REPO_ROOT / "config" / "plant.example.yaml").read_text("utf-8")
EXAMPLE_LINES = EXAMPLE_TEXT.splitlines()

FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="plant-fuzz-") as d:
        yield Path(d)


def _load(workdir: Path, text: str | bytes) -> PlantConfig | ConfigError:
    path = workdir / "plant.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load_plant_config(path)
    except ConfigError as err:
        assert err.file == path
        assert str(err).startswith(str(path))
        if err.line is not None:
            # YAML breaks lines at \r and a few Unicode separators too, not only at \n.
            decoded = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
            breaks = len(re.findall("\r\n|[\n\r\x85\u2028\u2029]", decoded))
            assert 1 <= err.line <= breaks + 1
        return err


# Pieces YAML treats specially: a random mix reaches the parser's and the constructor's
# corners (tags, anchors, merge keys, flow collections, odd scalars).
TOKENS = st.sampled_from(
    [
        ":", ": ", "- ", "? ", "{", "}", "[", "]", ",", "&a ", "*a", "<<: ", "!!set ", "!!binary ",
        "!!timestamp ", "!!python/object:os.system ", "!!float ", "!!int ", "'", '"', "|", ">",
        "#", "\n", "\n  ", "\n    ", "\t", "~", "null", "yes", "1e999", "0x1F", "20:00",
        "2024-13-45", ".nan", "-.inf", "\x00", "\ud800", "\ufeff", "id", "plant", "lines",
        "machines", "ideal_cycle_seconds", "CNC-01", "中文",
    ]
)  # fmt: skip


@FUZZ
@given(st.lists(TOKENS | st.text(max_size=8), max_size=60).map("".join))
def test_any_text_is_a_plant_or_a_config_error(workdir: Path, text: str) -> None:
    _load(workdir, text)


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_are_a_plant_or_a_config_error(workdir: Path, data: bytes) -> None:
    _load(workdir, data)


@FUZZ
@given(
    st.integers(0, len(EXAMPLE_LINES) - 1),
    st.sampled_from(["delete", "duplicate", "replace", "insert"]),
    TOKENS | st.text(max_size=20),
)
def test_edits_of_the_example_are_a_plant_or_a_config_error(
    workdir: Path, at: int, how: str, piece: str
) -> None:
    lines = list(EXAMPLE_LINES)
    if how == "delete":
        del lines[at]
    elif how == "duplicate":
        lines.insert(at, lines[at])
    elif how == "replace":
        lines[at] = piece
    else:
        lines.insert(at, piece)
    _load(workdir, "\n".join(lines) + "\n")


# Any value where the example has a value: the models must refuse it cleanly.
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.dates()
    | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(data: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


EXAMPLE_DATA = yaml.safe_load(EXAMPLE_TEXT)
EXAMPLE_PATHS = [p for p in _paths(EXAMPLE_DATA) if p]


@FUZZ
@given(st.sampled_from(EXAMPLE_PATHS), VALUES)
def test_any_value_anywhere_is_a_plant_or_a_config_error(
    workdir: Path, where: tuple[object, ...], value: object
) -> None:
    data = yaml.safe_load(EXAMPLE_TEXT)  # a fresh copy to edit
    node = data
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    result = _load(workdir, yaml.safe_dump(data, allow_unicode=True))
    if isinstance(result, ConfigError):
        assert result.line is not None  # a value error always has a place in the file


def _mappings(node: yaml.Node) -> list[yaml.MappingNode]:
    out: list[yaml.MappingNode] = []
    if isinstance(node, yaml.MappingNode):
        out.append(node)
        for _k, v in node.value:
            out += _mappings(v)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            out += _mappings(v)
    return out


EXAMPLE_MAPPINGS = len(_mappings(yaml.compose(EXAMPLE_TEXT)))


@FUZZ
@given(st.integers(0, EXAMPLE_MAPPINGS - 1), st.integers(0, 50), VALUES)
def test_a_key_given_twice_is_always_an_error(
    workdir: Path, which: int, pick: int, value: object
) -> None:
    """Whatever key is repeated, with whatever value, the file is refused at the repeat."""
    root = yaml.compose(EXAMPLE_TEXT)
    mapping = _mappings(root)[which]
    key_node, _ = mapping.value[pick % len(mapping.value)]
    value_node = yaml.representer.SafeRepresenter().represent_data(value)
    mapping.value.append((yaml.ScalarNode(key_node.tag, key_node.value), value_node))
    text = yaml.serialize(root, allow_unicode=True)
    result = _load(workdir, text)
    assert isinstance(result, ConfigError)
    assert "duplicate key (first given on line" in str(result), str(result)
    assert result.line is not None
    assert str(key_node.value) in text.splitlines()[result.line - 1]
