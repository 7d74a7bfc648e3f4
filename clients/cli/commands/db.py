"""``longshore db upgrade``: bring the kanban database to the newest schema."""

from __future__ import annotations

import argparse
from typing import Any

from clients.cli.context import Context
from clients.cli.errors import CliError


def register(sub: Any) -> None:
    """Add the ``db`` command group."""
    parser = sub.add_parser("db", help="the kanban database")
    cmds = parser.add_subparsers(dest="db_cmd", required=True, metavar="COMMAND")
    upgrade = cmds.add_parser("upgrade", help="migrate the database to the newest revision")
    upgrade.add_argument(
        "--url",
        default=None,
        help="SQLAlchemy URL (default: LONGSHORE_DATABASE_URL or SQLite under LONGSHORE_HOME)",
    )
    upgrade.set_defaults(run=_upgrade, needs_gateway=False)


def _database_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    from services.kanban.settings import KanbanSettings
    from services.runtime.config import SettingsError, load_settings

    try:
        settings = load_settings(KanbanSettings)
    except SettingsError as exc:
        raise CliError(str(exc)) from exc
    from services.kanban.db import default_url

    url: str = settings.database.url or default_url(settings.home)
    return url


def _upgrade(args: argparse.Namespace, ctx: Context) -> int:
    url = _database_url(args.url)
    from services.kanban import migrations

    with ctx.out.progress("migrating"):
        try:
            migrations.upgrade(url)
        except Exception as exc:  # alembic and drivers raise many types; report one line
            raise CliError(f"db upgrade failed: {type(exc).__name__}: {exc}") from exc
    revision = migrations.current(url)
    shown = url.split("@")[-1] if "@" in url else url
    if ctx.out.json_mode:
        ctx.out.json({"url": shown, "revision": revision})
    else:
        ctx.out.line(f"Database {shown} at revision {revision}")
    return 0
