"""The Dash app: a multi-page app whose pages live in dashboards/pages/.

`create_app` builds a fresh app (tests build several in one process); `serve` runs one on
MESFLOW_HTTP_HOST:MESFLOW_HTTP_PORT for `mesflow run dashboard`.
"""

from __future__ import annotations

from pathlib import Path

import dash
from dash import html

from dashboards import context
from dashboards.pages import PAGES
from dashboards.queries import Database
from mesflow.plant import PlantConfig
from mesflow.settings import Settings

ASSETS = Path(__file__).resolve().parent / "assets"


def create_app(settings: Settings, plant: PlantConfig, database_url: str) -> dash.Dash:
    app = dash.Dash(
        __name__,
        use_pages=True,
        # No folder scan: Dash would re-import the page modules on every app it builds and
        # their callbacks would land on the first app only. Pages register in `register`.
        pages_folder="",
        assets_folder=str(ASSETS),
        title="mesflow",
        # Dash sets the tab title to "Updating..." during every callback; with a 2 s refresh
        # that is a flicker on every board. Empty means "leave the title alone".
        update_title="",
        # JavaScript from the Python package, not a CDN: plant networks are often offline.
        serve_locally=True,
    )
    context.attach(app.server, context.BoardContext(settings, plant, Database(database_url)))
    for page in PAGES:
        page.register(app)
    app.layout = html.Div(dash.page_container, className="app-root")
    return app


def serve(settings: Settings, plant: PlantConfig, database_url: str) -> None:
    """Run the boards until interrupted (Flask's threaded server; no debugger, no reloader)."""
    app = create_app(settings, plant, database_url)
    host, port = settings.http_host, settings.http_port
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(
        f"mesflow dashboards on http://{shown}:{port}/  (andon board: /, English: /?lang=en)",
        flush=True,
    )
    try:
        app.server.run(host=host, port=port, threaded=True, debug=False, use_reloader=False)
    finally:
        context.of(app.server).db.close()
