from __future__ import annotations

import pytest

from app.config import ConfigError, load_settings

BASE_ENV = {"AVATAR_SYNC_JIRA_URL": "https://jira.example.com", "AVATAR_SYNC_JIRA_USERNAME": "svc",
            "AVATAR_SYNC_JIRA_PASSWORD": "pw", "AVATAR_SYNC_LDAP_URL": "ldaps://dc1,ldaps://dc2",
            "AVATAR_SYNC_LDAP_BASE_DN": "DC=corp,DC=example"}


def test_defaults_from_env_only():
    s = load_settings(env=BASE_ENV)
    assert s.size == 256 and s.login_debounce_seconds == 600
    assert s.photo_attributes == ("thumbnailPhoto", "jpegPhoto") and not s.sync_disabled
    assert s.directories[0].urls == ("ldaps://dc1", "ldaps://dc2") and s.directories[0].verify_tls
    assert s.jira.verify_tls and s.webhook.max_body_bytes == 65536


def test_file_then_env_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("""
size = 128
photo_attributes = ["jpegPhoto"]
[jira]
url = "https://jira.example.com/"
token = "file-token"
[[directories]]
name = "ad"
urls = ["ldaps://dc1.corp"]
base_dn = "DC=corp"
username_attribute = "sAMAccountName"
photo_attributes = ["thumbnailPhoto"]
[[directories]]
name = "ldap"
urls = ["ldap://ldap.corp"]
base_dn = "dc=corp"
""")
    s = load_settings(path, env={"AVATAR_SYNC_SIZE": "96", "AVATAR_SYNC_JIRA_TOKEN": "env-token"})
    assert s.size == 96 and s.jira.token == "env-token" and s.jira.url == "https://jira.example.com"
    assert [d.name for d in s.directories] == ["ad", "ldap"]
    assert s.attributes_for(s.directories[0]) == ("thumbnailPhoto",)
    assert s.attributes_for(s.directories[1]) == ("jpegPhoto",)


def test_secret_files(tmp_path):
    (tmp_path / "pw").write_text("from-file\n")
    s = load_settings(env={**BASE_ENV, "AVATAR_SYNC_JIRA_PASSWORD_FILE": str(tmp_path / "pw"),
                           "AVATAR_SYNC_WEBHOOK_SECRET_FILE": str(tmp_path / "pw")})
    assert s.jira.password == "from-file" and s.webhook.secret == "from-file"
    assert "from-file" not in repr(s)


def test_empty_attribute_list_disables():
    assert load_settings(env={**BASE_ENV, "AVATAR_SYNC_PHOTO_ATTRIBUTES": ""}).sync_disabled


@pytest.mark.parametrize("env,key", [
    ({"AVATAR_SYNC_SIZE": "0"}, "size"),
    ({"AVATAR_SYNC_SIZE": "abc"}, "size"),
    ({"AVATAR_SYNC_JIRA_URL": "jira.example.com"}, "jira.url"),
    ({"AVATAR_SYNC_JIRA_PASSWORD": ""}, "jira.username"),
    ({"AVATAR_SYNC_LDAP_URL": "http://dc1"}, "directories[0].urls"),
    ({"AVATAR_SYNC_LDAP_USER_FILTER": "objectClass=user"}, "directories[0].user_filter"),
    ({"AVATAR_SYNC_JIRA_MAX_CONCURRENCY": "-1"}, "jira.max_concurrency"),
    ({"AVATAR_SYNC_LDAP_VERIFY_TLS": "maybe"}, "directories[0].verify_tls"),
    ({"AVATAR_SYNC_JIRA_TOKEN_FILE": "/nonexistent/file"}, "AVATAR_SYNC_JIRA_TOKEN_FILE"),
    ({"AVATAR_SYNC_DATABASE_URL": "state.db"}, "database_url"),
    ({"AVATAR_SYNC_JIRA_LIMITS_SCOPE": "galaxy"}, "jira.limits_scope"),
    ({"AVATAR_SYNC_CROP": "middle"}, "crop"),
    ({"AVATAR_SYNC_PHOTO_REMOVED": "delete"}, "photo_removed"),
    ({"AVATAR_SYNC_PREFER": "newest"}, "prefer"),
    ({"AVATAR_SYNC_HTTP_PHOTOS_URL": "https://photos.example/all.jpg"}, "http_photos.url"),
    ({"AVATAR_SYNC_HTTP_PHOTOS_URL": "ftp://photos.example/{username}"}, "http_photos.url"),
    ({"AVATAR_SYNC_HTTP_PHOTOS_URL": "https://p/{username}", "AVATAR_SYNC_HTTP_PHOTOS_POSITION": "middle"},
     "http_photos.position"),
    ({"AVATAR_SYNC_JIRA_LIMITS_SCOPE": "cluster"}, "jira.limits_scope"),  # SQLite: one machine, no cluster
])
def test_invalid_values_name_the_key(env, key):
    with pytest.raises(ConfigError) as info:
        load_settings(env={**BASE_ENV, **env})
    assert info.value.key == key
    assert str(info.value).startswith(f"configuration error: {key}: ")


def test_file_problems(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("size = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, env=BASE_ENV)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("sise = 12\n")
    with pytest.raises(ConfigError, match="sise: unknown key"):
        load_settings(unknown, env=BASE_ENV)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", env=BASE_ENV)


def test_no_directory():
    env = {k: v for k, v in BASE_ENV.items() if "LDAP" not in k}
    with pytest.raises(ConfigError, match="directories: at least one directory"):
        load_settings(env=env)


def test_numbers_from_env_and_file(tmp_path):
    env = {**BASE_ENV, "AVATAR_SYNC_JIRA_MAX_REQUESTS_PER_SECOND": "2.5"}
    assert load_settings(env=env).jira.max_requests_per_second == 2.5
    for value, message in [("1.5", "size: must be a whole number, got '1.5'"),
                           ("9999", "size: must be between 16 and 500, got 9999")]:
        with pytest.raises(ConfigError, match=message):
            load_settings(env={**BASE_ENV, "AVATAR_SYNC_SIZE": value})
    with pytest.raises(ConfigError, match="max_requests_per_second: must be a number, got 'fast'"):
        load_settings(env={**BASE_ENV, "AVATAR_SYNC_JIRA_MAX_REQUESTS_PER_SECOND": "fast"})
    path = tmp_path / "c.toml"
    path.write_text("[jira]\nmax_requests_per_second = 5\n")
    s = load_settings(path, env=BASE_ENV)
    assert s.jira.max_requests_per_second == 5.0 and isinstance(s.jira.max_requests_per_second, float)
    for toml in ("size = 1.5", "size = true"):
        path.write_text(toml + "\n")
        with pytest.raises(ConfigError, match="size: must be a whole number$"):
            load_settings(path, env=BASE_ENV)
    path.write_text("[jira]\nmax_requests_per_second = \"x\"\n")
    with pytest.raises(ConfigError, match="must be a number, got 'x'"):
        load_settings(path, env=BASE_ENV)


def test_usernames_are_refused_or_escaped_before_a_log_line():
    from app import usernames
    assert usernames.problem("jdoe") is None and usernames.problem("Jürgen Müller") is None
    assert "255" in usernames.problem("x" * 256) and "U+000A" in usernames.problem("a\nb")
    assert "U+200B" in usernames.problem("jd\u200boe")  # a zero-width space hides in plain sight
    assert usernames.loggable("evil\r\n2026-11-30 ERROR forged") == "evil\\r\\n2026-11-30 ERROR forged"
    assert usernames.loggable("\x1b[31mred\ud800") == "\\x1b[31mred\\ud800"


def test_a_secret_from_the_environment_beats_a_secret_file_in_toml(tmp_path):
    """Rotating a secret through the environment must not leave the file's old one in force."""
    old = tmp_path / "old-secret"
    old.write_text("old-secret-from-file")
    toml = tmp_path / "c.toml"
    toml.write_text(f"""
[jira]
url = "https://jira.example.com"
token = "t"
[webhook]
secret_file = "{old}"
[[directories]]
urls = ["ldaps://dc.example"]
base_dn = "dc=example"
""")
    assert load_settings(toml, env={}).webhook.secret == "old-secret-from-file"
    fresh = load_settings(toml, env={"AVATAR_SYNC_WEBHOOK_SECRET": "new-secret-from-env"})
    assert fresh.webhook.secret == "new-secret-from-env"
    new_file = tmp_path / "new-secret"
    new_file.write_text("new-secret-from-env-file\n")
    from_env_file = load_settings(toml, env={"AVATAR_SYNC_WEBHOOK_SECRET_FILE": str(new_file)})
    assert from_env_file.webhook.secret == "new-secret-from-env-file"


def test_the_sqlite_state_is_created_owner_only(tmp_path):
    from app.store import Store
    store = Store(f"sqlite:///{tmp_path}/new/dir/state.db")
    store.ping()
    assert (tmp_path / "new" / "dir").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new" / "dir" / "state.db").stat().st_mode & 0o777 == 0o600
    store.dispose()


def test_the_controls_from_the_environment():
    settings = load_settings(env={**BASE_ENV, "AVATAR_SYNC_EXCLUDE_USERS": "CEO, svc-bot",
                                  "AVATAR_SYNC_EXCLUDE_GROUPS": "no-avatar-sync",
                                  "AVATAR_SYNC_PHOTO_REMOVED": "user_upload", "AVATAR_SYNC_CROP": "upper",
                                  "AVATAR_SYNC_HTTP_PHOTOS_URL": "https://hr.example/p/{username}.jpg",
                                  "AVATAR_SYNC_HTTP_PHOTOS_TOKEN": "t0ken", "AVATAR_SYNC_PREFER": "largest"})
    assert settings.exclude_users == {"ceo", "svc-bot"} and settings.exclude_groups == ("no-avatar-sync",)
    assert (settings.photo_removed, settings.crop, settings.prefer) == ("user_upload", "upper", "largest")
    assert settings.http_photos.token == "t0ken" and settings.http_photos.position == "last"
    assert "t0ken" not in repr(settings)
