"""Where settings come from, below the Settings classes: AVATAR_SYNC_* environment variables
mapped onto the TOML file's keys, secrets read from files, and typed reading of a TOML table
whose every error names the full key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config_keys import ENV_KEYS, ENV_PREFIX, ENV_SECRETS


class ConfigError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(f"configuration error: {key}: {message}")
        self.key = key


# --- environment ---------------------------------------------------------------------------


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if isinstance(data.get("directories"), list):
        data["directories"] = [dict(d) if isinstance(d, dict) else d for d in data["directories"]]
    for suffix, (table, key) in ENV_KEYS.items():
        name = ENV_PREFIX + suffix
        value = env.get(name)
        if suffix in ENV_SECRETS and env.get(name + "_FILE"):
            value = read_secret_file(name + "_FILE", env[name + "_FILE"])
        if value is None:
            continue
        if table == ("directories",):
            dirs = data.setdefault("directories", [])
            if not isinstance(dirs, list):
                raise ConfigError("directories", "must be a list of tables ([[directories]])")
            if not dirs:
                dirs.append({"name": "ldap"})
            target = dirs[0]
        elif table:
            target = data.setdefault(table[0], {})
        else:
            target = data
        if key in ("urls", "photo_attributes", "user_groups", "exclude_users", "exclude_groups"):  # comma lists
            target[key] = [v.strip() for v in value.split(",") if v.strip()]
        else:
            target[key] = value
        if suffix in ENV_SECRETS:
            target.pop(key + "_file", None)  # the environment wins over the file's *_file too
    return data


def read_secret_file(key: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read secret file {path}: {exc.strerror}") from None


class Reader:
    """Typed access to one TOML table; env strings are converted, errors name the full key."""

    def __init__(self, data: Mapping[str, Any], prefix: str, env: Mapping[str, str]):
        if not isinstance(data, Mapping):
            raise ConfigError(prefix.rstrip("."), "must be a table")
        self.data, self.prefix, self.env = data, prefix, env

    def _fail(self, key: str, msg: str):
        raise ConfigError(self.prefix + key, msg)

    def reject_unknown(self, known: set[str]) -> None:
        unknown = sorted(set(self.data) - known)
        if unknown:
            self._fail(unknown[0], f"unknown key (known: {', '.join(sorted(known))})")

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, Mapping):
            self._fail(key, "must be a table")
        return value

    def string(self, key: str, default: str) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            self._fail(key, "must be a string")
        return value.strip()

    def secret(self, key: str) -> str:
        if self.data.get(key + "_file"):
            return read_secret_file(self.prefix + key + "_file", self.string(key + "_file", ""))
        value = self.data.get(key, "")
        if not isinstance(value, str):
            self._fail(key, "must be a string")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default).lower()
        if value not in choices:
            self._fail(key, f"must be {' or '.join(choices)}, got {value!r}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        return self._ranged(key, default, low, high, int, "a whole number")

    def number(self, key: str, default: float, low: float, high: float) -> float:
        return float(self._ranged(key, default, low, high, float, "a number"))

    def _ranged(self, key: str, default, low, high, kind: type, what: str):
        """A number within [low, high]; from the environment it arrives as a string."""
        value = self.data.get(key, default)
        if isinstance(value, str):
            try:
                value = kind(value.strip())
            except ValueError:
                self._fail(key, f"must be {what}, got {value!r}")
        allowed = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            self._fail(key, f"must be {what}")
        if not low <= value <= high:
            self._fail(key, f"must be between {low} and {high}, got {value}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            self._fail(key, f"must be true or false, got {value!r}")
        if not isinstance(value, bool):
            self._fail(key, "must be true or false")
        return value

    def str_list(self, key: str, default):
        value = self.data.get(key, default)
        if value is None:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._fail(key, "must be a list of strings")
        return [v.strip() for v in value if v.strip()]

    def attr_list(self, key: str, default) -> tuple[str, ...]:
        values = self.str_list(key, default)
        if values is None:
            return ()
        for v in values:
            if not v.replace("-", "").replace(";", "").isalnum():
                self._fail(key, f"{v!r} is not an attribute name")
        return tuple(values)
