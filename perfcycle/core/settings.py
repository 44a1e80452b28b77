"""The one settings class: every knob comes from PERFCYCLE_* environment variables or .env."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SECRET_KEY = "dev-only-change-me"
MIN_SECRET_KEY_LENGTH = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PERFCYCLE_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".perfcycle"), description="working folder for local state")
    database_url: str = ""
    policies_dir: Path = REPO_ROOT / "policies"

    portal_base_url: str = "http://127.0.0.1:8700"
    # Signs session cookies and CSRF tokens. The default is public: the portal serves other
    # hosts only with a key of its own (weak_secret_key), and `perfcycle up` makes one per home.
    secret_key: str = DEFAULT_SECRET_KEY

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_starttls: bool = False
    smtp_tls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    mail_from: str = "perfcycle <perfcycle@localhost>"
    smtp_max_connections: int = Field(default=4, ge=1, le=64)
    smtp_timeout: float = Field(default=30.0, gt=0)
    mail_rate_per_second: float = Field(default=50.0, ge=0, description="send-rate cap; 0 = none")
    mail_render_processes: int | None = Field(
        default=None, ge=0, description="processes rendering mail for the relay; None = automatic"
    )
    mail_max_attempts: int = Field(default=10, ge=1, description="temporary failures before failed")
    # An organisation's own templates (same names) win over the packaged ones.
    mail_templates_dir: Path | None = None
    # Deadlines are stored in UTC and shown to readers in this zone.
    mail_timezone: str = "Asia/Shanghai"

    prefect_ui_url: str = "http://127.0.0.1:4200"

    # Mailing lists for roles that are groups rather than people.
    hr_email: str = "hr@example.com"
    committee_email: str = "calibration-committee@example.com"
    supervision_email: str = "supervision@example.com"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'perfcycle.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def weak_secret_key(key: str) -> str | None:
    """Why `key` must not sign sessions on a reachable portal, or None when it may."""
    if key == DEFAULT_SECRET_KEY:
        return "is the public default"
    if key.upper().startswith("CHANGE-ME"):
        return "is the deploy templates' placeholder"
    if len(key) < MIN_SECRET_KEY_LENGTH:
        return f"is shorter than {MIN_SECRET_KEY_LENGTH} characters"
    return None
