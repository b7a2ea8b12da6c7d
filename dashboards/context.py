"""What a page needs at request time: settings, plant model, database.

Kept on the Flask app (not in module globals) because pages are modules shared by every app
in the process, while each app (a test, a second plant) has its own plant and database.
Layout functions and callbacks run inside a request, so they find their own app's context.
"""

from __future__ import annotations

from dataclasses import dataclass

import flask

from dashboards.i18n import normalize_lang
from dashboards.queries import Database
from mesflow.plant import PlantConfig
from mesflow.settings import Settings

_KEY = "mesflow.board_context"


@dataclass(frozen=True)
class BoardContext:
    settings: Settings
    plant: PlantConfig
    db: Database

    def lang(self, requested: str | None) -> str:
        """`?lang=` if it names a known language, else the configured default."""
        return normalize_lang(requested, self.settings.language)


def attach(server: flask.Flask, ctx: BoardContext) -> None:
    server.config[_KEY] = ctx


def of(server: flask.Flask) -> BoardContext:
    ctx = server.config.get(_KEY)
    if not isinstance(ctx, BoardContext):
        raise RuntimeError("no board context: was the app built with dashboards.app.create_app?")
    return ctx


def current() -> BoardContext:
    """The context of the app serving the current request (layouts and callbacks)."""
    return of(flask.current_app)
