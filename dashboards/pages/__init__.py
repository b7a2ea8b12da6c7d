"""The board pages, one module per page: its layout and its callbacks live together.

Every page module has `register(app)`, which calls `dash.register_page(...)` and binds its
callbacks to that app. To add a page, write the module and list it in `PAGES`.
"""

from __future__ import annotations

from types import ModuleType

from dashboards.pages import (
    alerts,
    analytics,
    andon,
    dispatch,
    inspections,
    kpis,
    labor,
    machine,
    operator,
    orders,
    promise,
    quality,
    sources,
    trace,
)

# Registration order; the navigation follows each page's `order`.
PAGES: tuple[ModuleType, ...] = (andon, analytics, machine, operator, orders, alerts, trace)
PAGES += (dispatch, promise)
PAGES += (kpis,)
PAGES += (sources,)
PAGES += (quality,)
PAGES += (labor,)
PAGES += (inspections,)
