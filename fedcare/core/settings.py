"""Reading a task's settings (``Task.config``) strictly: a setting of the wrong type is refused,
with the protocol and the setting named (a server's mistake or a peer's forgery, not a crash)."""

from __future__ import annotations

from fedcare.core.message import Config


def setting_str(config: Config, name: str, protocol: str) -> str:
    """The non-empty string setting ``name``; ValueError naming ``protocol`` otherwise."""
    value = config.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{protocol}: setting {name!r} is missing")
    return value


def setting_int(config: Config, name: str, protocol: str) -> int:
    """The integer setting ``name`` (not a bool); ValueError naming ``protocol`` otherwise."""
    value = config.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{protocol}: setting {name!r} must be an integer")
    return value
