"""The plant configuration: the example loads; bad files name the file, the line and the field."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from mesflow.plant import ConfigError, PlantConfig, load_plant_config
from mesflow.settings import REPO_ROOT

EXAMPLE = REPO_ROOT / "config" / "plant.example.yaml"


def test_example_loads(plant: PlantConfig) -> None:
    assert plant.plant.id == "demo"
    assert str(plant.tz) == "Asia/Shanghai"
    assert len(plant.machines) == 12
    assert [ln.id for ln in plant.lines] == ["IM", "CNC"]
    assert plant.line_of_machine["CNC-03"].area == "machining"


def test_names_in_both_languages(plant: PlantConfig) -> None:
    name = plant.machines["IM-01"].name
    assert name.get("zh") == "1号注塑机"
    assert name.get("zh-CN") == "1号注塑机"
    assert name.get("en") == "Press 1 (Haitian 250t)"
    assert plant.reasons_by_code["material_shortage"].name.zh == "缺料"


def test_ideal_cycle_product_then_machine_then_default(plant: PlantConfig) -> None:
    assert plant.ideal_cycle_seconds("IM-01", "P-100") == 27  # product table
    assert plant.ideal_cycle_seconds("IM-01", "P-200") == 28  # P-200 not on IM-01: machine
    assert plant.ideal_cycle_seconds("IM-01") == 28  # no product: machine
    assert plant.ideal_cycle_seconds("IM-01", "P-999") == 28  # unknown product: machine


def test_shift_labels_name_shifts_on_the_boards(plant: PlantConfig) -> None:
    assert plant.shift_label("night", "zh") == "夜班"
    assert plant.shift_label("day", "en") == "Day shift"
    # The CNC line's own "day" has no label: the plant calendar's names it.
    assert plant.shift_label("day", "zh") == "白班"
    # A code the calendars do not label (a renamed shift in old rows) reads as itself.
    assert plant.shift_label("swing", "zh") == "swing"
    assert plant.shift_label(None, "zh") == plant.shift_label("", "en") == ""


def test_a_code_in_both_trees_has_one_name_in_the_example(plant: PlantConfig) -> None:
    # A scrap reason and a defect of the same code are one thing to the floor: the quality
    # board and the analytics page must not call it 飞边 on one and 披锋 on the other.
    both = set(plant.reasons_by_code) & set(plant.defects_by_code)
    assert both >= {"short_shot", "flash", "dimension_out"}
    for code in both:
        assert plant.reasons_by_code[code].name == plant.defects_by_code[code].name, code


def test_machine_without_own_values_uses_defaults(tmp_path: Path) -> None:
    text = _example_with(", ideal_cycle_seconds: 18, microstop_seconds: 90}", "}")
    plant = load_plant_config(_write(tmp_path, text))
    assert plant.ideal_cycle_seconds("IM-06") == 30  # defaults.ideal_cycle_seconds
    assert plant.ideal_cycle_seconds("IM-06", "P-200") == 17  # the product still wins
    assert plant.microstop_seconds("IM-06") == 120  # defaults.microstop_seconds


def test_microstop_overrides(plant: PlantConfig) -> None:
    assert plant.microstop_seconds("IM-06") == 90
    assert plant.microstop_seconds("CNC-06") == 0  # 0 turns micro-stops off
    assert plant.microstop_seconds("IM-01") == 120


def test_calendar_override_for_cnc(plant: PlantConfig) -> None:
    cnc = plant.calendar_for("CNC-01")
    assert cnc.workdays == [1, 2, 3, 4, 5]
    assert [(s.name, s.start, s.end) for s in cnc.shifts] == [("day", time(7, 30), time(19, 30))]
    molding = plant.calendar_for("IM-01")
    assert molding is plant.shift_calendar
    assert [s.name for s in molding.shifts] == ["day", "night"]
    assert molding.shifts[1].end == time(8, 0)  # ends the next morning


def test_state_mapping(plant: PlantConfig) -> None:
    assert plant.machines["IM-01"].state_mapping == "euromap77"
    assert plant.map_state("euromap77", "5") == "down"
    assert plant.map_state("euromap77", "running") == "running"  # canonical passes through
    assert plant.map_state("euromap77", "99") is None


# -- bad files -------------------------------------------------------------------------------


def _example_with(old: str, new: str) -> str:
    text = EXAMPLE.read_text("utf-8")
    assert text.count(old) == 1, f"edit target {old!r} must be unique in the example"
    return text.replace(old, new)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(text: str, needle: str) -> int:
    """1-based line of the only line containing `needle` (so tests survive example edits)."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, needle
    return hits[0]


def _fails(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_plant_config(path)
    return caught.value


# (edit of the example, line to blame, field path expected in the message, words expected)
BAD_EDITS = {
    "typo in a key": (
        ("microstop_seconds: 90}", "microstop_secnds: 90}"),
        "id: IM-06",
        "lines.0.machines.5.microstop_secnds",
        "Extra inputs are not permitted",
    ),
    "negative microstop_seconds": (
        ("microstop_seconds: 90}", "microstop_seconds: -5}"),
        "id: IM-06",
        "lines.0.machines.5.microstop_seconds",
        "greater than or equal to 0",
    ),
    "unknown time zone": (
        ("timezone: Asia/Shanghai", "timezone: Asia/Suzhou"),
        "timezone:",
        "plant.timezone",
        "unknown time zone 'Asia/Suzhou'",
    ),
    "duplicate machine id": (
        ("{id: CNC-05,", "{id: CNC-04,"),
        "Lathe 2",
        "lines.1.machines.4.id",
        "'CNC-04' is used twice",
    ),
    "product names an unknown machine": (
        ("{CNC-04: 55, CNC-05: 55}", "{CNC-04: 55, CNC-99: 55}"),
        "CNC-99",
        "products.3.ideal_cycle_seconds.CNC-99",
        "unknown machines ['CNC-99']",
    ),
    "state mapping to a non-canonical state": (
        ('"5": down', '"5": alarm'),
        '"5": alarm',
        "state_mappings.euromap77.5",
        "'running'",
    ),
    "machine names an undefined state mapping": (
        (
            "zh: 2号注塑机}, ideal_cycle_seconds: 28, state_mapping: euromap77}",
            "zh: 2号注塑机}, ideal_cycle_seconds: 28, state_mapping: euromap99}",
        ),
        "2号注塑机",
        "lines.0.machines.1.state_mapping",
        "'euromap99'",
    ),
    "duplicate reason code": (
        ("{code: flash,", "{code: short_shot,"),
        "name: {en: Flash",
        "reasons.6.code",
        "'short_shot' is used twice",
    ),
    "shift label in one language only": (
        ("label: {en: Night shift, zh: 夜班}", "label: {en: Night shift}"),
        "label: {en: Night shift}",
        "shift_calendar.shifts.1.label.zh",
        "Field required",
    ),
    "unquoted time of day": (
        ('end: "19:30"', "end: 19:30"),
        "end: 19:30",
        "lines.1.shift_calendar.shifts.0.end",
        'quotes, e.g. "20:00"',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_EDITS))
def test_bad_file_names_file_line_and_field(tmp_path: Path, case: str) -> None:
    (old, new), blamed, field, words = BAD_EDITS[case]
    text = _example_with(old, new)
    path = _write(tmp_path, text)
    err = _fails(path)
    line = _line_of(text, blamed)
    assert err.file == path
    assert err.line == line
    assert str(err).startswith(f"{path}:{line}: {field}: "), str(err)
    assert words in str(err)


def test_invalid_yaml_syntax_names_the_line(tmp_path: Path) -> None:
    text = _example_with("  site: suzhou ", "  site: [suzhou ")
    path = _write(tmp_path, text)
    err = _fails(path)
    # PyYAML reports an unclosed flow sequence where it notices it: at or after the opening.
    opened = _line_of(text, "site: [suzhou")
    assert err.line is not None and opened <= err.line <= opened + 1
    assert str(err).startswith(f"{path}:{err.line}: not valid YAML")


def test_bad_indentation_names_the_line(tmp_path: Path) -> None:
    text = _example_with("  site: suzhou ", " site: suzhou ")
    err = _fails(_write(tmp_path, text))
    assert err.line == _line_of(text, " site: suzhou")
    assert "not valid YAML" in str(err)


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    err = _fails(path)
    assert str(err) == f"{path}:1: the plant configuration must be a YAML mapping"


def test_missing_section_points_at_its_parent(tmp_path: Path) -> None:
    text = "plant: {id: x, name: {en: X, zh: X}, timezone: UTC}\nlines: []\n"
    err = _fails(_write(tmp_path, text))
    assert str(err).startswith(f"{tmp_path / 'plant.yaml'}:1: shift_calendar: Field required")


def test_missing_file(tmp_path: Path) -> None:
    err = _fails(tmp_path / "nope.yaml")
    assert "cannot read" in str(err)


def test_duplicated_key_is_an_error_with_both_lines(tmp_path: Path) -> None:
    # safe_load would keep the last value: the ideal cycle time would change unnoticed.
    text = _example_with(
        "zh: 2号注塑机}, ideal_cycle_seconds: 28,",
        "zh: 2号注塑机}, ideal_cycle_seconds: 28, ideal_cycle_seconds: 14,",
    )
    path = _write(tmp_path, text)
    err = _fails(path)
    line = _line_of(text, "ideal_cycle_seconds: 14")
    assert err.file == path and err.line == line
    assert str(err) == (
        f"{path}:{line}: lines.0.machines.1.ideal_cycle_seconds: duplicate key "
        f"(first given on line {line})"
    )


def test_duplicated_section_names_its_second_line(tmp_path: Path) -> None:
    text = EXAMPLE.read_text("utf-8") + "defaults:\n  ideal_cycle_seconds: 1\n"
    path = _write(tmp_path, text)
    err = _fails(path)
    first = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("defaults:"))
    assert err.line == len(text.splitlines()) - 1
    assert str(err) == f"{path}:{err.line}: defaults: duplicate key (first given on line {first})"


def test_merge_key_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    text = _example_with(
        "  site: suzhou ", "  site: suzhou \n  extra: &common {a: 1}\n  <<: *common\n"
    )
    path = _write(tmp_path, text)
    err = _fails(path)
    assert err.line == _line_of(text, "<<: *common")
    assert "merge keys (<<) are not supported" in str(err)
    assert str(err).startswith(f"{path}:{err.line}: ")


@pytest.mark.parametrize("value", ['!!int ""', "!!float ''", "!!timestamp x", "!!bool ''"])
def test_a_tagged_value_pyyaml_cannot_read_is_an_error_with_the_line(
    tmp_path: Path, value: str
) -> None:
    # Found by the fuzz test: PyYAML's own constructors raise IndexError/AttributeError here.
    path = tmp_path / "plant.yaml"
    path.write_text(f"plant:\n  name: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_plant_config(path)
    assert "plant.yaml:2" in str(err.value) and "not valid YAML" in str(err.value)
