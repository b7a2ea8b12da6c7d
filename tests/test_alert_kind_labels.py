"""Every alert rule kind has a name on the boards and in messages, in both languages: a new
kind without one shows a raw key (`alert_kind_first_article`) to the night shift."""

from __future__ import annotations

from typing import get_args

import pytest

from dashboards.i18n import t
from mesflow.alert_rules import Kind
from notify.channels import render

KINDS = get_args(Kind)


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_named(kind: str, lang: str) -> None:
    label = t(f"alert_kind_{kind}", lang)
    assert label and label != f"alert_kind_{kind}"
    assert render._KIND[lang].get(kind), f"notify/channels/render.py names no {kind!r} in {lang}"


def test_the_two_languages_differ() -> None:
    for kind in KINDS:
        assert t(f"alert_kind_{kind}", "zh") != t(f"alert_kind_{kind}", "en")
