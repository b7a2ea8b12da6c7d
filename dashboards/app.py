"""The Dash app: a multi-page app whose pages live in dashboards/pages/.

`create_app` builds a fresh app (tests build several in one process), closed by default:
every route and callback needs a signed-in user with the role its page declares
(dashboards/auth.py). `serve` runs one on MESFLOW_HTTP_HOST:MESFLOW_HTTP_PORT with waitress,
a production WSGI server, for `mesflow run dashboard`.
"""

from __future__ import annotations

import errno
import signal
from pathlib import Path
from types import FrameType

import dash
import flask
import psycopg
import waitress
from dash import html

from dashboards import ack_route, auth, context, customer_route
from dashboards.i18n import t
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
    db = Database(database_url, max_size=settings.dashboard_db_pool_max)
    context.attach(app.server, context.BoardContext(settings, plant, db))
    auth.install(app, settings, db)
    for page in PAGES:
        page.register(app)
    ack_route.register(app)  # /ack/<token>: acknowledging an alert from its message
    customer_route.register(app)  # /c/<token>: a customer's read-only order link
    _register_not_found()
    app.layout = html.Div(dash.page_container, className="app-root")
    auth.check_declarations(app)
    return app


def _register_not_found() -> None:
    """The app's own 404 page instead of Dash's bare "404 - Page not found".

    Dash's router shows the layout of the page whose module ends in `not_found_404` for any
    path no page has; it needs only the viewer role (the gate's role for unknown paths).
    """
    dash.register_page(
        "dashboards.not_found_404",
        path="/404",
        name="Not found",
        title="404 · mesflow",
        layout=not_found_layout,
        nav=False,
        min_role="viewer",
    )


def not_found_layout(lang: str | None = None, **_query: str) -> html.Main:
    ctx = context.current()
    lang = ctx.lang(lang)
    return html.Main(
        className=f"not-found lang-{lang}",
        lang="zh-CN" if lang == "zh" else "en",
        children=[
            html.Div("404", className="not-found-code"),
            html.H1(t("not_found_title", lang)),
            html.P(t("not_found_text", lang).format(path=_requested_path()[:200] or "/")),
            html.A(t("go_home", lang), href=f"/?lang={lang}", className="not-found-home"),
        ],
    )


def _requested_path() -> str:
    """The address the browser asked for: Dash's router sends it in the callback's body."""
    if not flask.has_request_context():
        return ""
    body = flask.request.get_json(silent=True, cache=True)
    for item in body.get("inputs", []) if isinstance(body, dict) else []:
        if isinstance(item, dict) and item.get("property") == "pathname":
            value = item.get("value")
            return value if isinstance(value, str) else ""
    return flask.request.path


def serve(settings: Settings, plant: PlantConfig, database_url: str) -> None:
    """Run the boards on waitress until interrupted (Ctrl-C or SIGTERM: a clean stop).

    waitress sets SO_REUSEADDR, so a restart gets the same port back even while connections
    of the previous run linger in TIME_WAIT (a TV's bookmark keeps working). A port another
    program really holds is one line and exit status 1, never a different port.
    """
    app = create_app(settings, plant, database_url)
    host, port = settings.http_host, settings.http_port
    try:
        server = waitress.create_server(
            app.server,
            host=host,
            port=port,
            threads=settings.http_threads,
            ident="mesflow",
            # Refused before it is read into memory or spooled to disk.
            max_request_body_size=auth.MAX_REQUEST_BYTES,
        )
    except OSError as err:
        context.of(app.server).db.close()
        raise SystemExit(f"mesflow dashboard: {listen_error(host, port, err)}") from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(
        f"mesflow dashboards on http://{shown}:{port}/  (andon board: /, English: /?lang=en;"
        " sign in with a user from `mesflow user add`)",
        flush=True,
    )

    hint = _users_hint(context.of(app.server).db)
    if hint:
        print(hint, flush=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # waitress's loop closes its sockets on this

    signal.signal(signal.SIGTERM, stop)
    try:
        server.run()  # returns on KeyboardInterrupt/SystemExit after closing
    finally:
        context.of(app.server).db.close()


def _users_hint(db: Database) -> str | None:
    """What to do when nobody could sign in yet; None when users exist or the DB is away."""
    try:
        row = db.run(
            lambda conn: conn.execute("SELECT count(*) FROM dashboard_user").fetchone(), timeout=5
        )
    except psycopg.errors.UndefinedTable:
        return "mesflow dashboard: no user tables yet: run `mesflow db migrate`"
    except psycopg.Error:
        return None  # the boards show the database banner; nothing to add here
    if row and row[0] == 0:
        return (
            "mesflow dashboard: no users yet, nobody can sign in: create one with"
            " `mesflow user add NAME --role admin` (docs/users.md)"
        )
    return None


def listen_error(host: str, port: int, err: OSError) -> str:
    """One line that says why `host:port` cannot be used and what to do."""
    if err.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use by another program (is a dashboard"
            f" still running? `ss -ltnp 'sport = :{port}'` shows which); stop it or set"
            " MESFLOW_HTTP_PORT"
        )
    if err.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine (MESFLOW_HTTP_HOST)"
    if err.errno == errno.EACCES:
        return f"no permission to listen on port {port} (ports below 1024 need privileges)"
    return f"cannot listen on {host}:{port}: {err.strerror or err}"
