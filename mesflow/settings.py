"""Endpoints, paths and secrets from environment variables (prefix MESFLOW_).

Unset endpoints mean "use the embedded default": the demo starts an embedded PostgreSQL
and an MQTT broker itself and then sets these variables for the components it launches.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESFLOW_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset = embedded PostgreSQL under data_dir"
    )
    mqtt_url: str | None = Field(
        default=None, description="mqtt://host:port; unset = start mosquitto or amqtt"
    )
    plant_config: Path = Field(default=REPO_ROOT / "config" / "plant.example.yaml")
    data_dir: Path = Field(default=REPO_ROOT / "var", description="state kept between runs")
    http_host: str = "127.0.0.1"
    http_port: int = 8050
    language: str = Field(default="zh", description="default UI language: zh or en")
    # Bytewax snapshot interval: bounds the work replayed after a crash, not output latency.
    snapshot_seconds: float = 2.0

    @property
    def recovery_dir(self) -> Path:
        return self.data_dir / "recovery"


def get_settings() -> Settings:
    return Settings()
