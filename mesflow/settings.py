"""Endpoints, paths and secrets from environment variables (prefix MESFLOW_).

Unset endpoints mean "use the embedded default": the demo starts an embedded PostgreSQL
and an MQTT broker itself and then sets these variables for the components it launches.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesflow.resources import SOURCE_ROOT, example_plant, is_source_checkout

REPO_ROOT = SOURCE_ROOT


def _default_data_dir() -> Path:
    # var/ of the source tree when running from one; an installed package must not write
    # into site-packages, so there it is var/ of the working directory.
    return REPO_ROOT / "var" if is_source_checkout() else Path("var").resolve()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESFLOW_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset = embedded PostgreSQL under data_dir"
    )
    mqtt_url: str | None = Field(
        default=None, description="mqtt://host:port; unset = start mosquitto or amqtt"
    )
    # MQTT collector (docs/broker.md). A stable client id per collector instance: the broker
    # keeps that instance's session and queued messages under it.
    mqtt_client_id: str | None = Field(
        default=None, description="MQTT client id; unset = mesflow-collector-<host name>"
    )
    mqtt_share_group: str | None = Field(
        default=None, description="MQTT 5 shared subscription group: collectors share the load"
    )
    mqtt_ca_file: Path | None = Field(default=None, description="CA file for mqtts:// URLs")
    mqtt_cert_file: Path | None = Field(default=None, description="client certificate (PEM)")
    mqtt_key_file: Path | None = Field(default=None, description="client certificate key (PEM)")
    # At most the ingest log's own limit (mesflow.ingest_log.MAX_PAYLOAD_BYTES, 64 KiB).
    mqtt_max_payload_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=64 * 1024,
        description="larger MQTT messages are dead-lettered too_large",
    )
    # Sparkplug B host application (`mesflow run sparkplug`, docs/collectors-sparkplug.md).
    sparkplug_host_id: str = Field(
        default="mesflow",
        pattern=r"^[^+/#\x00]+$",
        description="Sparkplug host id: STATE topic spBv1.0/STATE/<id>, client id",
    )
    plant_config: Path = Field(default_factory=example_plant)
    data_dir: Path = Field(default_factory=_default_data_dir, description="state kept between runs")
    http_host: str = "127.0.0.1"
    http_port: int = 8050
    language: str = Field(default="zh", description="default UI language: zh or en")
    # Dashboard sign-in (docs/users.md). Sessions are signed cookies; unset secret = one is
    # generated into data_dir/dashboard-session.key on first start and kept.
    auth_session_secret: str | None = Field(default=None, description="signs session cookies")
    auth_session_hours: float = Field(default=12.0, gt=0, description="idle time before sign-out")
    auth_cookie_secure: bool = Field(default=False, description="cookie only over HTTPS")
    auth_proxy_header: str | None = Field(
        default=None,
        description="user name header set by a trusted reverse proxy, e.g. X-Remote-User",
    )
    auth_trusted_proxies: str = Field(
        default="",
        description="addresses/networks whose proxy header is believed: 10.0.0.5,10.1.0.0/16",
    )
    http_threads: int = Field(default=8, ge=1, description="dashboard worker threads")
    dashboard_db_pool_max: int = Field(
        default=8, ge=1, description="dashboard DB connections at most"
    )
    # Andon wall screen (docs/dashboards.md): a stop without a reason after this long shows
    # "reason missing"; a machine silent this long shows grey "no data since".
    andon_reason_missing_s: float = Field(default=120.0, ge=0, description="andon: reason missing")
    andon_silent_s: float = Field(default=600.0, gt=0, description="andon: silent machine")
    # Alerts (docs/alerts.md): rules, people and channels; unset = the example file's rules
    # apply only in the demo, elsewhere no alert rules.
    alerts_config: Path | None = Field(default=None, description="alerts YAML file")
    public_url: str = Field(
        default="http://127.0.0.1:8050",
        description="the boards' address as people reach it: links in alert messages",
    )
    # Bytewax snapshot interval: bounds the work replayed after a crash. Each snapshot
    # writes every busy machine's state while the flow waits (its recent part times stay
    # in the log: tracker_snapshot.lean_runs): 10 s, not 2 s, keeps those pauses rare
    # (docs/performance.md).
    snapshot_seconds: float = 10.0
    # How often a caught-up dataflow reads new log rows: each read is a batch, and each
    # batch costs every machine in it a step through the flow. 20 ms: the lowest latency;
    # 60 ms: about a quarter less dataflow CPU at 5,000 events/s, 25 ms more latency.
    log_poll_ms: float = Field(default=20.0, gt=0, le=10_000, description="log poll, ms")
    # How long the live results writer gathers rows before it writes them: one poll's
    # rows reach it in several batches, and each transaction costs the same whatever its
    # size. 20 ms, the log poll: about one transaction per poll (at 5,000 events/s a
    # quarter less dataflow and PostgreSQL CPU than 0, p99 latency +5–10 ms). 0: each
    # batch as it comes.
    results_gather_ms: float = Field(default=20.0, ge=0, le=1_000, description="results gather, ms")
    # The dataflow as a Bytewax cluster (docs/scale-out.md): how many processes, this one's
    # id (0..N-1), and every process's host:port separated by ';' (empty: localhost:2101..).
    dataflow_processes: int = Field(default=1, ge=1, description="dataflow processes")
    dataflow_process_id: int = Field(default=0, ge=0, description="this dataflow process's id")
    dataflow_addresses: str = Field(default="", description="host:port;host:port of each")
    # CRM order intake (`mesflow run api`, docs/crm.md). Clients authenticate with a bearer
    # token or with Standard-Webhooks-signed requests; no client configured = all refused.
    api_host: str = "127.0.0.1"
    api_port: int = 8060
    crm_tokens: str = Field(default="", description="bearer tokens: client:token,client2:token2")
    crm_signing_secrets: str = Field(
        default="", description="signed requests: client:whsec_...,client2:whsec_..."
    )
    api_max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="larger request bodies: 413, never read whole"
    )
    # Progress callbacks to the CRM (`mesflow run notify`).
    crm_callback_url: str | None = None
    crm_webhook_secret: str | None = Field(default=None, description="whsec_... signing key")
    notify_max_attempts: int = Field(default=12, ge=1)
    notify_backoff_base_s: float = Field(default=2.0, gt=0)
    notify_backoff_cap_s: float = Field(default=3600.0, gt=0)
    notify_timeout_s: float = Field(default=15.0, gt=0)
    # Alert e-mail (`mesflow run notify`, docs/alerts.md "Delivery"); unset host = no e-mail.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "mesflow@localhost"
    smtp_starttls: bool = Field(default=True, description="STARTTLS (verified) before login")
    smtp_ca_file: Path | None = Field(default=None, description="CA for the SMTP server")
    # Chat robots' budget, per robot, shared by all dispatchers (WeCom/DingTalk: 20 a minute).
    alert_robot_limit: int = Field(default=20, ge=1)
    alert_robot_window_s: float = Field(default=60.0, gt=0)
    alert_rate_limited_retry_s: float = Field(default=60.0, ge=0)
    # Retention (`mesflow retention`, docs/operations.md): days to keep; 0 = keep forever.
    # What the dataflow or a resume still needs is always kept, whatever the days.
    retention_ingest_log_days: int = Field(default=30, ge=0)
    retention_dead_letter_days: int = Field(default=90, ge=0, description="resolved ones")
    retention_unresolved_dead_letter_days: int = Field(default=0, ge=0)
    retention_outbox_days: int = Field(default=30, ge=0, description="delivered callbacks")
    retention_intake_days: int = Field(default=30, ge=0, description="intake_delivery")
    retention_order_history_days: int = Field(default=365, ge=0, description="closed orders")
    retention_late_merge_days: int = Field(default=30, ge=0, description="late events merged")
    retention_process_value_days: int = Field(default=7, ge=0, description="raw process values")
    retention_process_minute_days: int = Field(
        default=180, ge=0, description="per-minute process value rollup"
    )
    retention_alert_delivery_days: int = Field(
        default=90, ge=0, description="alert messages sent, stale or failed (pending stay)"
    )
    retention_alert_days: int = Field(default=365, ge=0, description="resolved alerts, steps")
    retention_labor_issue_days: int = Field(
        default=365, ge=0, description="sign-in anomalies (the labour board's issues)"
    )
    retention_batch_rows: int = Field(default=2000, ge=1)
    retention_resume_margin_s: float = Field(default=600.0, ge=0)
    retention_interval_s: float = Field(
        default=3600.0, ge=0, description="run by `mesflow run notify`; 0 = only by command"
    )

    @field_validator("alerts_config", "smtp_host", "smtp_user", "smtp_password", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose.yml passes `${MESFLOW_ALERTS_CONFIG:-}`: empty means not set (an
        # empty path would be the working directory).
        return None if value == "" else value

    @property
    def recovery_dir(self) -> Path:
        return self.data_dir / "recovery"


def get_settings() -> Settings:
    return Settings()
