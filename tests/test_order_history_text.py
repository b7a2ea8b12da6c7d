"""The order page's change history reads as a person writes it: times in the plant's zone
(whatever offset the CRM sent), a status by its name, and a version that changed nothing
says so instead of an empty cell."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from dashboards.order_queries import HistoryRow
from dashboards.pages import orders

TZ = ZoneInfo("Asia/Shanghai")


def test_times_in_the_plant_zone_whatever_the_offset() -> None:
    change = {"due": {"old": "2026-12-01T23:00:00+00:00", "new": "2026-12-03T07:00:00+08:00"}}
    assert orders.change_text(change, TZ, "en") == "Due: 12-02 07:00 → 12-03 07:00"
    assert orders.change_text(change, TZ, "zh") == "交期: 12-02 07:00 → 12-03 07:00"
    # A time without an offset is the plant's own; a date alone or a code stays as it is.
    assert orders.change_text({"due": {"new": "2026-12-03T07:00:00"}}, TZ, "en") == (
        "Due: 12-03 07:00"
    )
    assert orders.change_text({"customer": {"new": "2026-12-03"}}, TZ, "en") == (
        "Customer: 2026-12-03"
    )


def test_quantity_status_and_unknown_fields() -> None:
    change = {
        "qty": {"old": 300, "new": 400},
        "status": {"old": "open", "new": "on_hold"},
        "colour": {"new": "red"},
    }
    assert orders.change_text(change, TZ, "en") == (
        "Qty: 300 → 400; Status: Open → On hold; colour: red"
    )
    assert (
        orders.change_text(change, TZ, "zh") == "数量: 300 → 400; 状态: 进行中 → 暂停; colour: red"
    )


def test_a_version_without_a_field_change_says_so() -> None:
    assert orders.change_text({}, TZ, "en") == "no change"
    assert orders.change_text({}, TZ, "zh") == "无变化"
    row = HistoryRow(
        work_order=None,
        version=2,
        changed_by="crm",
        accepted_at=datetime(2026, 12, 1, 23, 0, tzinfo=UTC),
        event_ts=datetime(2026, 12, 1, 23, 0, tzinfo=UTC),
        change={},
    )
    text = str(orders._history([row], TZ, "en"))
    assert "no change" in text and "12-02 07:00" in text
