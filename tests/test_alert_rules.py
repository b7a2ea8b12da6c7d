"""The alerts file loader (mesflow/alert_rules.py): every error names the file and the line;
hostile files are refused with a message, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from mesflow.alert_rules import AlertsConfig, AlertsConfigError, load_alerts_config
from mesflow.plant import PlantConfig, load_plant_config

HEADER = """\
people:
  zhang: {display: 张伟, email: zhang@plant.example}
  li: {display: Li Na, email: li@plant.example}
channels:
  hook: {type: webhook, url: "https://it.example/hook"}
  wecom: {type: wecom, url_env: TEST_WECOM_URL}
rules:
"""
HEADER_LINES = HEADER.count("\n")


@pytest.fixture(scope="module")
def plant() -> PlantConfig:
    return load_plant_config("config/plant.example.yaml")


ENV = {"TEST_WECOM_URL": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k"}


def load(tmp_path: Path, plant: PlantConfig, rules: str, env: dict[str, str] = ENV) -> AlertsConfig:
    path = tmp_path / "alerts.yaml"
    path.write_text(HEADER + rules, encoding="utf-8")
    return load_alerts_config(path, plant, environ=env)


def error(tmp_path: Path, plant: PlantConfig, rules: str, env: dict[str, str] = ENV) -> str:
    with pytest.raises(AlertsConfigError) as info:
        load(tmp_path, plant, rules, env)
    return str(info.value)


GOOD = """\
  - name: down
    kind: machine_down
    scope: {line: IM}
    severity: critical
    levels:
      - {after_min: 5, people: [zhang], channels: [wecom]}
      - {after_min: 15, people: [li], channels: [hook]}
    quiet_hours: {from: "22:00", to: "06:00", except: critical}
"""


def test_a_good_file(tmp_path: Path, plant: PlantConfig) -> None:
    config = load(tmp_path, plant, GOOD)
    [rule] = config.rules
    assert rule.kind == "machine_down" and rule.scope.line == "IM"
    assert [lv.after_min for lv in rule.levels] == [5, 15]
    assert rule.quiet_hours is not None and rule.quiet_hours.exempt == ["critical"]
    assert config.channels["wecom"].endpoint.startswith("https://qyapi")


@pytest.mark.parametrize(
    ("rules", "line", "message"),
    [
        # unknown kind
        ("  - name: x\n    kind: machine_exploded\n    levels: [{after_min: 1}]\n", 1,
         "rules.0: Input tag 'machine_exploded'"),
        # unknown person in a level (on the level's line)
        ("  - name: x\n    kind: machine_down\n    levels:\n      - {after_min: 1}\n"
         "      - {after_min: 2, people: [wang]}\n", 5,
         "rules.0.levels.1.people.0: person 'wang' is not under people"),
        # unknown channel
        ("  - name: x\n    kind: machine_down\n    levels:\n      - {after_min: 1, channels: [ding]}\n",
         4, "rules.0.levels.0.channels.0: channel 'ding' is not under channels"),
        # levels not increasing
        ("  - name: x\n    kind: machine_down\n    levels:\n      - {after_min: 15}\n"
         "      - {after_min: 5}\n", 3, "levels must come in increasing after_min"),
        # machine / line not in the plant
        ("  - name: x\n    kind: machine_down\n    scope: {machine: IM-99}\n"
         "    levels: [{after_min: 1}]\n", 3, "machine 'IM-99' is not in the plant"),
        ("  - name: x\n    kind: silent\n    after_s: 60\n    scope:\n      line: PAINT\n"
         "    levels: [{after_min: 1}]\n", 5, "line 'PAINT' is not in the plant"),
        # bad quiet-hours times
        ("  - name: x\n    kind: machine_down\n    levels: [{after_min: 1}]\n"
         "    quiet_hours: {from: \"25:00\", to: \"06:00\"}\n", 4, "rules.0.quiet_hours.from"),
        ("  - name: x\n    kind: machine_down\n    levels: [{after_min: 1}]\n"
         "    quiet_hours: {from: 22:00, to: \"06:00\"}\n", 4, 'write times of day in quotes'),
        ("  - name: x\n    kind: machine_down\n    levels: [{after_min: 1}]\n"
         "    quiet_hours: {from: \"06:00\", to: \"06:00\"}\n", 4, "empty quiet period"),
        # a parameter of another kind, a missing one, a wrong type
        ("  - name: x\n    kind: machine_down\n    threshold: 0.1\n    levels: [{after_min: 1}]\n",
         3, "rules.0.threshold: Extra inputs are not permitted"),
        ("  - name: x\n    kind: kpi_below\n    metric: oee\n    levels: [{after_min: 1}]\n",
         1, "rules.0.target: Field required"),
        ("  - name: x\n    kind: scrap_rate\n    threshold: lots\n    levels: [{after_min: 1}]\n",
         3, "rules.0.threshold"),
        ("  - name: x\n    kind: machine_down\n    levels: {after_min: 1}\n", 3, "rules.0.levels"),
        # huge numbers
        ("  - name: x\n    kind: machine_down\n    levels: [{after_min: 1e300}]\n", 3,
         "less than or equal to"),
        ("  - name: x\n    kind: silent\n    after_s: .inf\n    levels: [{after_min: 0}]\n", 3,
         "rules.0.after_s"),
        ("  - name: x\n    kind: scrap_rate\n    threshold: 0.1\n    min_parts: 99999999999999999999\n"
         "    levels: [{after_min: 0}]\n", 4, "rules.0.min_parts"),
        # a NUL character, a name that is no code, a duplicate rule name
        ("  - name: \"x\\0y\"\n    kind: machine_down\n    levels: [{after_min: 1}]\n", 1,
         "rules.0.name"),
        ("  - name: x\n    kind: machine_down\n    levels: [{after_min: 1}]\n"
         "  - name: x\n    kind: silent\n    after_s: 5\n    levels: [{after_min: 1}]\n", 4,
         "rule name 'x' is used twice"),
        ("  - name: x\n    kind: order_at_risk\n    scope: {line: IM}\n    levels: [{after_min: 0}]\n",
         3, "no line or machine scope"),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_field(
    tmp_path: Path, plant: PlantConfig, rules: str, line: int, message: str
) -> None:
    msg = error(tmp_path, plant, rules)
    assert msg.startswith(f"{tmp_path / 'alerts.yaml'}:{HEADER_LINES + line}: "), msg
    assert message in msg


def test_unset_channel_variable_names_the_channel_and_the_variable(
    tmp_path: Path, plant: PlantConfig
) -> None:
    msg = error(tmp_path, plant, GOOD, env={})
    assert "channels.wecom" in msg and "TEST_WECOM_URL" in msg
    assert re.match(rf"{re.escape(str(tmp_path))}/alerts.yaml:6: ", msg), msg


def test_channels_optional_leaves_unset_channels_out(tmp_path: Path, plant: PlantConfig) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("channels_optional: true\n" + HEADER + GOOD, encoding="utf-8")
    config = load_alerts_config(path, plant, environ={})
    assert set(config.channels) == {"hook"} and "TEST_WECOM_URL" in config.disabled["wecom"]
    [rule] = config.rules
    assert config.level_channels(rule.levels[0]) == ()  # e-mail to zhang still goes
    assert config.level_channels(rule.levels[1]) == ("hook",)
    # A channel that is wrong for another reason is still an error.
    path.write_text(
        "channels_optional: true\n" + HEADER.replace("url_env: TEST_WECOM_URL", "url: x") + GOOD,
        encoding="utf-8",
    )
    with pytest.raises(AlertsConfigError, match=r"channels\.wecom"):
        load_alerts_config(path, plant, environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("rules: 5\n", "rules: Input should be a valid list"),
        ("people: {a: {display: x, email: a@b.c}}\npeople: {}\n", "duplicate key"),
        ("rules:\n  - &r {name: x}\n  - <<: *r\n", "merge keys"),
        ("\x00", "not valid YAML"),
        ("disabled: {x: y}\n", "disabled: Extra inputs are not permitted"),
        ("unknown_key: 1\n", "unknown_key: Extra inputs are not permitted"),
    ],
)
def test_hostile_files(tmp_path: Path, plant: PlantConfig, text: str, message: str) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AlertsConfigError) as info:
        load_alerts_config(path, plant, environ={})
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))


def test_not_utf8_and_missing_file(tmp_path: Path, plant: PlantConfig) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_bytes(b"rules: [\xff]\n")
    with pytest.raises(AlertsConfigError, match="not UTF-8"):
        load_alerts_config(path, plant)
    with pytest.raises(AlertsConfigError, match="cannot read"):
        load_alerts_config(tmp_path / "nope.yaml", plant)


def test_empty_file_is_no_rules(tmp_path: Path, plant: PlantConfig) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert load_alerts_config(path, plant).rules == []


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=300))
def test_any_text_is_a_config_or_one_error(text: str) -> None:
    plant = load_plant_config("config/plant.example.yaml")
    path = Path("/tmp/pt-engine-fuzz-alerts.yaml")
    path.write_text(HEADER + text, encoding="utf-8", errors="surrogatepass")
    try:
        load_alerts_config(path, plant, environ=ENV)
    except AlertsConfigError as err:
        assert str(err).startswith(str(path))


def test_cli_refuses_a_bad_alerts_file_before_anything_runs(tmp_path: Path) -> None:
    from mesflow.cli import main

    path = tmp_path / "alerts.yaml"
    path.write_text(HEADER + "  - name: x\n    kind: nope\n    levels: [{after_min: 1}]\n")
    events = tmp_path / "events.jsonl"
    events.write_text("")
    result = CliRunner().invoke(
        main,
        ["replay", str(events)],
        env={
            "MESFLOW_ALERTS_CONFIG": str(path),
            "MESFLOW_DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
            **ENV,
        },
    )
    assert result.exit_code == 1
    assert f"alerts configuration: {path}:{HEADER_LINES + 1}: rules.0: Input tag 'nope'" in (
        result.output
    )
