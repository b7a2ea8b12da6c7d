"""Who and where alerts go: the `people` and `channels` sections of the alerts file.

The alerts-file loader (mesflow/alert_rules.py) composes these models; validation errors
carry the path (`channels.line1-wecom`), so the loader names the file and the line.

Robot URLs carry their key (the key *is* the credential for a WeCom robot), so the file
names environment variables (`url_env`, `secret_env`), which are read once, at load time:
an unset variable is an error that names the channel and the variable. The values are kept
in private attributes, out of `repr()` and `model_dump()`, so they do not reach logs.

Pass `context={"environ": {...}}` to `model_validate` to read variables from a mapping
other than `os.environ` (tests).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

Language = Literal["zh", "en"]
ChannelType = Literal["wecom", "dingtalk", "feishu", "webhook"]

# Deliberately loose: the SMTP server is the judge of an address; this catches typos such as
# a missing '@' or a stray space or comma (two addresses in one field).
_EMAIL = re.compile(r"^[^@\s,;<>\"]+@[^@\s,;<>\"]+\.[^@\s,;<>\".]+$")
# Digits, optionally with a leading '+' (international form); robots match mentions on the
# exact number registered in the chat app, so no spaces or dashes.
_MOBILE = re.compile(r"^\+?[0-9]{5,20}$")
# WeCom user ids (帐号): letters, digits and _ - . @ (the admin console's rule).
_WECOM_USERID = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Model(BaseModel):
    # Typos in a key are errors, not silently ignored settings.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Person(_Model):
    """Someone an alert can reach: by e-mail, and by mention in a WeCom/DingTalk group."""

    display: str = Field(min_length=1, max_length=100)
    email: str | None = None
    mobile: str | None = None
    wecom_userid: str | None = None
    language: Language = "zh"

    @field_validator("display")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("display must be a printable name")
        return value.strip()

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.fullmatch(value):
            raise ValueError(f"not an e-mail address: {value!r}")
        return value

    @field_validator("mobile", mode="before")
    @classmethod
    def _mobile(cls, value: Any) -> Any:
        # An unquoted 13800000001 is a YAML int; accept it, but a leading 0 or '+' would have
        # been lost, so tell the user to quote when it does not look like a phone number.
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not (isinstance(value, str) and _MOBILE.fullmatch(value)):
            raise ValueError(
                f'a mobile number is digits, optionally after "+", in quotes: {value!r}'
            )
        return value

    @field_validator("wecom_userid")
    @classmethod
    def _userid(cls, value: str | None) -> str | None:
        if value is not None and not _WECOM_USERID.fullmatch(value):
            raise ValueError(f"a WeCom user id is letters, digits and _ . @ - : {value!r}")
        return value

    @model_validator(mode="after")
    def _reachable(self) -> Person:
        if self.email is None and self.mobile is None and self.wecom_userid is None:
            raise ValueError(
                "give at least one of email, mobile, wecom_userid: nothing can reach this person"
            )
        return self


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    ctx = info.context
    if isinstance(ctx, Mapping) and isinstance(ctx.get("environ"), Mapping):
        return ctx["environ"]
    return os.environ


class Channel(_Model):
    """A robot or webhook an alert is posted to.

    `name` is the channel's key in the file (filled in by `Channels`), so errors can name it.
    """

    name: str = ""
    type: ChannelType
    url: str | None = None
    url_env: str | None = None
    secret_env: str | None = None
    # A group has no one language: the robot's messages are written in this one.
    language: Language = "zh"

    _url: str = PrivateAttr(default="")
    _secret: str | None = PrivateAttr(default=None)

    @field_validator("url_env", "secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"not an environment variable name: {value!r}")
        return value

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("url must start with https:// (or http://)")
        return value

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Channel:
        label = f"channel {self.name!r}" if self.name else "this channel"
        if (self.url is None) == (self.url_env is None):
            raise ValueError(f"{label}: give exactly one of url, url_env")
        if self.url is not None and self.type != "webhook":
            # Robot URLs contain their key: keep them out of the file (and out of git).
            raise ValueError(
                f"{label}: a {self.type} robot URL contains its key; put it in an environment "
                "variable and give url_env"
            )
        if self.type == "wecom" and self.secret_env is not None:
            raise ValueError(f"{label}: WeCom robots are not signed; remove secret_env")
        env = _environ(info)
        url = self.url
        if self.url_env is not None:
            url = env.get(self.url_env) or None
            if url is None:
                raise ValueError(
                    f"{label}: environment variable {self.url_env} (url_env) is not set"
                )
            if not url.startswith(("https://", "http://")):
                raise ValueError(
                    f"{label}: environment variable {self.url_env} must hold the full URL "
                    "(https://...), not only the key"
                )
        secret = None
        if self.secret_env is not None:
            secret = env.get(self.secret_env) or None
            if secret is None:
                raise ValueError(
                    f"{label}: environment variable {self.secret_env} (secret_env) is not set"
                )
        self._url = url or ""
        self._secret = secret
        return self

    @property
    def endpoint(self) -> str:
        """The resolved URL (with the robot's key): never log it."""
        return self._url

    @property
    def secret(self) -> str | None:
        """The resolved signing secret, if any."""
        return self._secret


def _named(value: Any) -> Any:
    # Give each channel its key, so its own validation errors can say which channel it is.
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(item, Mapping) and "name" not in item:
                item = {"name": str(key), **item}
            out[key] = item
        return out
    return value


Channels = Annotated[dict[str, Channel], BeforeValidator(_named)]
"""The `channels:` mapping; use this type for the field so each channel knows its name."""

People = dict[str, Person]
"""The `people:` mapping."""
