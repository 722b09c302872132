"""The service's configuration file for a test run, a benchmark or a replica: TOML written
from dicts (tomli-w), so every value is quoted as TOML wants and each caller names only the
keys it sets."""
from __future__ import annotations

from pathlib import Path

import tomli_w

from tests.rig import slapd as slapd_rig


def slapd_section(ldap_url: str, base_dn: str, name: str = "openldap", **extra) -> dict:
    """A [[directories]] entry for the rig's slapd, bound as its service account."""
    return {"name": name, "urls": [ldap_url], "bind_dn": slapd_rig.SVC_DN, "bind_password": slapd_rig.SVC_PW,
            "base_dn": base_dn, **extra}


def write_service_config(path: Path, *, database_url: str, directories: list[dict], **keys) -> Path:
    """``keys``: top-level keys and whole sections (``jira={...}``, ``worker={...}``)."""
    path.write_text(tomli_w.dumps({"database_url": database_url, **keys, "directories": directories}))
    return path
