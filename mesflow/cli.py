"""The `mesflow` command. Every subcommand has --help."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
import pydantic

from mesflow.plant import PlantConfig
from mesflow.settings import Settings, get_settings

if TYPE_CHECKING:
    from mesflow.alert_rules import AlertsConfig

COMPONENTS = ("collector-mqtt", "dataflow", "dashboard", "api", "notify", "sparkplug", "opcua")


def _plant(settings: Settings) -> PlantConfig:
    from mesflow.plant import ConfigError, load_plant_config

    try:
        return load_plant_config(settings.plant_config)
    except ConfigError as err:
        raise click.ClickException(f"plant configuration: {err}") from None


def _alerts(settings: Settings, plant: PlantConfig, *, demo: bool = False) -> AlertsConfig | None:
    """The alerts file (MESFLOW_ALERTS_CONFIG; the demo's default: the example), validated
    at start: a bad file is one line naming the file and the line (docs/alerts.md)."""
    from mesflow.alert_rules import AlertsConfigError, load_alerts_config
    from mesflow.resources import resource_dir

    path = settings.alerts_config
    if path is None and demo:
        path = resource_dir("config") / "alerts.example.yaml"
    if path is None:
        return None
    try:
        config = load_alerts_config(path, plant)
    except AlertsConfigError as err:
        raise click.ClickException(f"alerts configuration: {err}") from None
    for name, why in config.disabled.items():
        click.echo(f"alerts: channel {name} left out (channels_optional): {why}", err=True)
    return config


def _database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise click.ClickException(
            "MESFLOW_DATABASE_URL is not set (mesflow demo sets it for the embedded database)"
        )
    return settings.database_url


def _mqtt_url(settings: Settings) -> str:
    if not settings.mqtt_url:
        raise click.ClickException("MESFLOW_MQTT_URL is not set (e.g. mqtt://127.0.0.1:1883)")
    return settings.mqtt_url


class _Main(click.Group):
    """The command group; an unreachable database is one line from every command."""

    def invoke(self, ctx: click.Context) -> object:
        import psycopg

        try:
            return super().invoke(ctx)
        except psycopg.OperationalError as err:  # connect refused, DNS, auth, server gone
            from mesflow.db import unreachable

            raise click.ClickException(unreachable(get_settings().database_url, err)) from None
        except psycopg.Error as err:  # e.g. a missing privilege: still one line, no trace
            first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
            raise click.ClickException(f"database: {first or type(err).__name__}") from None
        except pydantic.ValidationError as err:
            if err.title != "Settings":
                raise
            # A bad MESFLOW_* value: one line per variable, no traceback.
            lines = [
                f"MESFLOW_{str(e['loc'][0]).upper()}={e.get('input')!r}: {e['msg']}"
                for e in err.errors()
            ]
            raise click.ClickException("settings: " + "; ".join(lines)) from None
        except RuntimeError as err:
            from mesflow.db import MigrationError
            from mesflow.resources import MissingResource
            from mesflow.services import PortInUse
            from streams.runner import DataflowBusy

            if isinstance(err, MigrationError | MissingResource | PortInUse | DataflowBusy):
                raise click.ClickException(str(err)) from None
            raise


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="mesflow")
def main(verbose: bool) -> None:
    """mesflow: real-time shop-floor analytics.

    Endpoints come from environment variables: MESFLOW_DATABASE_URL, MESFLOW_MQTT_URL,
    MESFLOW_PLANT_CONFIG (default config/plant.example.yaml), MESFLOW_DATA_DIR (default var/).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.option("--speed", default=1.0, show_default=True, help="Simulated seconds per real second.")
@click.option("--seed", default=42, show_default=True, help="Seed of the plant simulator.")
@click.option("--port", default=8050, show_default=True, help="Port of the dashboard.")
@click.option(
    "--history-days",
    default=7.0,
    show_default=True,
    type=click.FloatRange(0, 29),
    help="Days of plant history simulated on the first start (0: none).",
)
def demo(speed: float, seed: int, port: int, history_days: float) -> None:
    """Start the live demo plant: database, broker, simulator, collector, dataflow, dashboard.

    Uses an embedded PostgreSQL and a local MQTT broker unless MESFLOW_DATABASE_URL /
    MESFLOW_MQTT_URL name real ones. Ctrl-C stops everything; the next start resumes.
    """
    from mesflow.demo import run_demo

    settings = get_settings()
    plant = _plant(settings)
    _alerts(settings, plant, demo=True)  # a bad alerts file: one line now, not in a log
    sys.exit(
        run_demo(settings, plant, speed=speed, seed=seed, port=port, history_days=history_days)
    )


@main.group()
def db() -> None:
    """Database schema tasks."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (idempotent) and load the plant model into the database."""
    from mesflow.db import migrate, sync_plant

    settings = get_settings()
    plant = _plant(settings)
    url = _database_url(settings)
    applied = migrate(url, log=click.echo)
    sync_plant(url, plant)
    click.echo(f"{len(applied)} migration(s) applied; plant model '{plant.plant.id}' loaded")


@main.command("run")
@click.argument("component", type=click.Choice(COMPONENTS))
@click.option("--processes", type=int, help="dataflow: processes in the cluster (default 1)")
@click.option("--process-id", type=int, help="dataflow: this process's id, 0..N-1")
@click.option("--addresses", help='dataflow: "host:port;host:port" of every process, in id order')
def run_component(
    component: str, processes: int | None, process_id: int | None, addresses: str | None
) -> None:
    """Run one long-lived COMPONENT until interrupted.

    \b
    collector-mqtt  MQTT JSON signals and reports -> ingest log
    dataflow        ingest log -> intervals, status, OEE per hour and shift, orders
    dashboard       the Dash boards on MESFLOW_HTTP_HOST:MESFLOW_HTTP_PORT
    api             CRM order intake (HTTP) on MESFLOW_API_HOST:MESFLOW_API_PORT
    notify          outbox -> signed CRM callbacks (MESFLOW_CRM_CALLBACK_URL)
    sparkplug       Sparkplug B host application: edge nodes -> ingest log
    opcua           OPC UA machines (plant file 'opcua:' sections) -> ingest log
    """
    settings = get_settings()
    plant = _plant(settings)
    from mesflow.db import check_reachable

    check_reachable(_database_url(settings))  # a wrong URL: one line now, not later in a log
    if component == "collector-mqtt":
        from collectors.mqtt_json import run_collector

        run_collector(plant, _mqtt_url(settings), _database_url(settings))
    elif component == "opcua":
        from collectors.opcua import run_opcua

        run_opcua(plant, _database_url(settings))
    elif component == "sparkplug":
        from collectors.sparkplug.collector import run_sparkplug

        run_sparkplug(plant, _mqtt_url(settings), _database_url(settings))
    elif component == "dataflow":
        from streams.runner import Cluster, run_live

        alerts = _alerts(settings, plant)
        try:  # docs/scale-out.md; the flags override MESFLOW_DATAFLOW_*
            cluster = Cluster.parse(
                settings.dataflow_processes if processes is None else processes,
                settings.dataflow_process_id if process_id is None else process_id,
                settings.dataflow_addresses if addresses is None else addresses,
            )
        except ValueError as err:
            raise click.UsageError(str(err)) from None
        run_live(
            plant,
            _database_url(settings),
            settings.recovery_dir,
            settings.snapshot_seconds,
            alerts=alerts,
            cluster=cluster,
            poll_ms=settings.log_poll_ms,
            gather_ms=settings.results_gather_ms,
        )
    elif component == "dashboard":
        from dashboards.app import serve

        serve(settings, plant, _database_url(settings))
    elif component == "api":
        from mesflow.services import require_port

        require_port(settings.api_port, settings.api_host, what="the API (MESFLOW_API_PORT)")
        from collectors.crm_api import serve as serve_api

        serve_api(plant, _database_url(settings), settings)
    elif component == "notify":
        from notify.dispatcher import DispatchConfig, endpoints_from_settings, run_notify

        try:
            endpoints = endpoints_from_settings(
                settings.crm_callback_url, settings.crm_webhook_secret
            )
        except ValueError as err:
            raise click.ClickException(str(err)) from None
        config = DispatchConfig(
            max_attempts=settings.notify_max_attempts,
            backoff_base_s=settings.notify_backoff_base_s,
            backoff_cap_s=settings.notify_backoff_cap_s,
            timeout_s=settings.notify_timeout_s,
        )
        run_notify(_database_url(settings), endpoints, config)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--snapshot-seconds",
    type=float,
    default=10.0,
    show_default=True,
    help="Bytewax snapshot interval: after a crash, at most this much work is redone.",
)
def replay(file: Path, quiet: bool, snapshot_seconds: float) -> None:
    """Run FILE (JSON Lines of canonical events) through the dataflow into the database.

    Exits when every event is processed, with a summary. Running it twice on the same
    file changes nothing: lines already in the ingest log are not added again.
    """
    from streams.replay import replay_file

    settings = get_settings()
    plant = _plant(settings)
    _alerts(settings, plant)  # the dataflow applies its rules (streams/runner.py)
    summary = replay_file(
        file,
        plant,
        _database_url(settings),
        settings.recovery_dir,
        progress=not quiet,
        snapshot_seconds=snapshot_seconds,
    )
    click.echo(summary.describe())
    if summary.dead_lettered:
        click.echo(
            "see the dead_letter table for the reasons (SELECT * FROM v_dead_letter_summary)"
        )


@main.command()
@click.option("--seed", default=42, show_default=True, help="Same seed, same plant history.")
@click.option("--speed", default=1.0, show_default=True, help="Simulated seconds per real second.")
@click.option(
    "--start",
    type=click.DateTime(),
    default=None,
    help="Simulated start time in plant time (default: where the last run stopped, else now;"
    " with --speed above 1, 4 hours ago).",
)
@click.option(
    "--duration",
    type=float,
    default=None,
    help="Simulated seconds to run (default: forever when live).",
)
@click.option(
    "--to-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write canonical events to this JSONL file instead of publishing (as fast as possible).",
)
@click.option(
    "--process-values",
    "process_values_s",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Moulding machines send process values after the first cycle this many seconds after"
    " their last (0: none).",
)
def simulate(
    seed: int,
    speed: float,
    start: datetime | None,
    duration: float | None,
    to_file: Path | None,
    process_values_s: float,
) -> None:
    """A believable plant: publishes machine signals and operator reports over MQTT."""
    from collectors.simulator import run_simulator, write_history

    settings = get_settings()
    plant = _plant(settings)
    tz_start = start.replace(tzinfo=plant.tz) if start else None
    if to_file is not None:
        if duration is None:
            raise click.ClickException("--to-file needs --duration (simulated seconds)")
        n = write_history(
            plant, to_file, seed=seed, start=tz_start, duration_s=duration,
            process_values_s=process_values_s,
        )  # fmt: skip
        click.echo(f"wrote {n} events to {to_file}")
        return
    # Without --start a run resumes where the previous one (same plant and seed) stopped.
    state = settings.data_dir / "simulator" / f"{plant.plant.id}-seed{seed}.json"
    run_simulator(
        plant,
        _mqtt_url(settings),
        seed=seed,
        speed=speed,
        start=tz_start,
        duration_s=duration,
        state_file=None if tz_start else state,
        database_url=settings.database_url or None,
        process_values_s=process_values_s,
    )


@main.command("simulate-crm")
@click.option("--api-url", default=None, help="Intake API (default: MESFLOW_API_HOST/PORT).")
@click.option("--listen", default=None, help="host:port for callbacks (default: callback URL's).")
@click.option("--interval", default=10.0, show_default=True, help="Seconds between changes.")
@click.option("--orders", default=6, show_default=True, help="Orders to create at the start.")
@click.option("--seed", default=42, show_default=True, help="Same seed, same orders and changes.")
@click.option("--duration", type=float, default=None, help="Seconds to run (default: forever).")
def simulate_crm(
    api_url: str | None,
    listen: str | None,
    interval: float,
    orders: int,
    seed: int,
    duration: float | None,
) -> None:
    """A CRM stand-in: posts orders and changes to the intake API, prints the callbacks."""
    from collectors.simulator.crm import run_crm

    settings = get_settings()
    plant = _plant(settings)
    sys.exit(
        run_crm(
            plant,
            settings,
            api_url=api_url,
            listen=listen,
            interval_s=interval,
            orders=orders,
            seed=seed,
            duration_s=duration,
        )
    )


@main.command()
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
def schema(out: Path | None) -> None:
    """Print the JSON Schema of the canonical event contract."""
    import json

    from mesflow.events import event_json_schema

    text = json.dumps(event_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


@main.command()
@click.option("--machine", metavar="M", help="One machine (default: the whole plant).")
@click.option("--line", metavar="L", help="One line (default: the whole plant).")
@click.option(
    "--shift", metavar="DATE/NAME",
    help="One shift instance, e.g. 2026-11-20/day, yesterday/night, or current.",
)  # fmt: skip
@click.option(
    "--date", "day", metavar="DATE", help="A plant-local day, e.g. 2026-11-20, today, yesterday."
)
@click.option("--from", "date_from", metavar="DATE", help="First plant-local day (inclusive).")
@click.option("--to", "date_to", metavar="DATE", help="Day after the last one (exclusive).")
@click.option(
    "--by", type=click.Choice(["hour", "shift", "customer", "product", "month"]),
    help="One row per hour or shift instance (default shift); with --kpis per customer, "
    "product or month (default month).",
)  # fmt: skip
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
    show_default=True, help="csv/json: raw numbers (seconds, ratios), ISO times with offset.",
)  # fmt: skip
@click.option("--reasons", is_flag=True, help="Downtime by reason (Pareto) instead of KPIs.")
@click.option("--lang", type=click.Choice(["zh", "en"]), help="Reason names (default: settings).")
@click.option("--kpis", is_flag=True, help="Delivery KPIs (docs/kpis.md); --from/--to: months.")
@click.option("--month", metavar="YYYY-MM", help="With --kpis: one plant-local month.")
@click.option("--customer", metavar="C", help="With --kpis: one customer.")
@click.option("--product", metavar="P", help="With --kpis: one product.")
@click.option("--csv", "csv_out", is_flag=True, help="With --kpis: CSV (as the /kpis board's).")
def report(
    machine: str | None,
    line: str | None,
    shift: str | None,
    day: str | None,
    date_from: str | None,
    date_to: str | None,
    by: str | None,
    fmt: str,
    reasons: bool,
    lang: str | None,
    kpis: bool,
    month: str | None,
    customer: str | None,
    product: str | None,
    csv_out: bool,
) -> None:
    """Print the KPI table (OEE, availability, ...) of a machine, a line or the plant.

    Give one period: --shift, --date, or --from/--to (plant-local dates, --to exclusive).
    Shifts belong to the day they start on. The total row is time-weighted (times and
    parts are added up, then divided), not an average of the rows. See docs/report.md.

    \b
    mesflow report --line IM --date 2026-11-20
    mesflow report --date today
    mesflow report --line IM --shift current --by hour
    mesflow report --machine IM-01 --shift 2026-11-20/night --by hour
    mesflow report --from 2026-11-16 --to 2026-11-23 --format csv > week.csv
    mesflow report --line CNC --date 2026-11-20 --reasons --lang en
    mesflow report --kpis --from 2026-10 --to 2026-11 --by customer --csv
    """
    import psycopg

    from mesflow.report import ReportError, make_report, resolve_period, resolve_scope

    settings = get_settings()
    plant = _plant(settings)
    if kpis:
        from mesflow.kpi_cli import kpi_report

        kpi_report(_database_url(settings), plant.tz, by, month, date_from, date_to,
                   customer, product, csv_out)  # fmt: skip
        return
    if by not in (None, "hour", "shift") or month or customer or product or csv_out:
        raise click.UsageError("--month/--customer/--product/--csv and --by customer|product|"
                               "month go with --kpis")  # fmt: skip
    try:
        scope = resolve_scope(plant, machine, line)
        period = resolve_period(
            plant, scope, shift=shift, day=day, date_from=date_from, date_to=date_to
        )
    except ReportError as err:
        raise click.UsageError(str(err)) from None
    try:
        out = make_report(
            _database_url(settings),
            plant,
            scope,
            period,
            by="hour" if by == "hour" else "shift",
            fmt="csv" if fmt == "csv" else "json" if fmt == "json" else "table",
            reasons=reasons,
            lang=lang or settings.language,
        )
    except psycopg.OperationalError:
        raise  # unreachable: the one line of _Main
    except psycopg.Error as err:  # missing migration: one line, no trace
        raise click.ClickException(f"database: {str(err).strip()}") from None
    click.echo(out.text, nl=False)
    if out.notice:  # an empty CSV/JSON stays parseable: the notice goes to stderr
        click.echo(out.notice, err=True)


def _register_user_commands() -> None:
    from mesflow.user_commands import token_group, user_group

    main.add_command(user_group)
    main.add_command(token_group)


_register_user_commands()


def _register_retention_commands() -> None:
    from mesflow import dead_letters, retention

    main.add_command(retention.cli)  # mesflow retention run|status
    main.add_command(dead_letters.cli)  # mesflow dead-letters list|show|requeue|discard


_register_retention_commands()


def _register_customer_link_commands() -> None:
    from mesflow import customer_links

    main.add_command(customer_links.cli)  # mesflow customer-link create|list|revoke


_register_customer_link_commands()


def _register_labor_commands() -> None:
    from mesflow import labor_report

    main.add_command(labor_report.cli)  # mesflow labor (docs/labor.md)


_register_labor_commands()


if __name__ == "__main__":
    main()
