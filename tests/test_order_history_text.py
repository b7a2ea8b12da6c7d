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


def test_a_work_orders_creation_reads_as_words() -> None:
    """A work order created without a routing said 'routing: None; order_no: SO-0002'."""
    change = {
        "qty": {"old": None, "new": 550},
        "machine": {"old": None, "new": "IM-05"},
        "routing": {"old": None, "new": None},
        "order_no": {"old": None, "new": "SO-0002"},
    }
    assert orders.change_text(change, TZ, "zh") == "数量: 550; 设备: IM-05; 订单: SO-0002"
    assert orders.change_text(change, TZ, "en") == "Qty: 550; Machine: IM-05; Order: SO-0002"
    # A routing reads as its operations; one taken away as a dash.
    routed = {
        "routing": {
            "old": None,
            "new": [{"op": "10", "name": "Moulding", "machines": ["IM-01"]}, {"op": "20"}],
        }
    }
    assert orders.change_text(routed, TZ, "zh") == "工艺路线: 10 Moulding > 20"
    dropped = {"machine": {"old": "IM-05", "new": None}}
    assert orders.change_text(dropped, TZ, "en") == "Machine: IM-05 → —"
    # A hostile routing (not the API's shape) still reads, and nothing says None.
    odd = {"routing": {"old": [1, None, {"x": 1}], "new": "text"}}
    assert "None" not in orders.change_text(odd, TZ, "en")


def test_callback_events_by_name() -> None:
    from notify.outbox import CALLBACK_TYPES

    for event in CALLBACK_TYPES:
        zh, en = (orders.callback_event_label(event, lang) for lang in ("zh", "en"))
        assert zh != en and "_" not in en and "order." not in zh, event
    assert orders.callback_event_label("order.work_started", "zh") == "已开工"
    assert orders.callback_event_label("order.made_up", "zh") == "made_up"


def test_durations_read_in_their_unit() -> None:
    # A loss under a minute read "0 min" beside its bar on the order page.
    assert orders.fmt_hours(40, "en") == "40 s" and orders.fmt_hours(40, "zh") == "40 秒"
    assert orders.fmt_hours(59.4, "en") == "59 s" and orders.fmt_hours(59.6, "en") == "1 min"
    assert orders.fmt_hours(18 * 60, "zh") == "18 分钟"
    assert orders.fmt_hours(3 * 3600 + 720, "en") == "3.2 h"
    assert orders.fmt_slack(-30, "en") == "-30 s" and orders.fmt_slack(None, "en") == "—"
