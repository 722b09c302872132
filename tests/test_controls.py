"""The controls admins of similar products asked for, end to end on real slapd (and Samba where
AD differs) and the Jira emulator: the crop, the preview, exclusions, what happens when a photo
is removed from the directory, and photos served over HTTP."""
from __future__ import annotations

import json
import threading

import pytest
from PIL import Image

from app import job_run
from tests import photos
from tests.helpers import make_settings, module_clock, run_sweep, slapd_directory
from tests.photos import BLUE, GREEN, RED
from tests.rig.photo_server import PhotoServer

WHITE = (255, 255, 255)


@pytest.fixture
def controls(tmp_path, slapd, ldap_ou, jira, services_for):
    """``controls(**settings)``: services on slapd's ``ldap_ou`` and the emulator."""
    def build(directories=None, **extra):
        settings = make_settings(tmp_path, jira.url, directories or [slapd_directory(slapd, ldap_ou)], **extra)
        return services_for(settings)
    return build


def sweep_counts(services) -> dict:
    return run_sweep(services)["counts"]


def portrait() -> bytes:
    """A tall photo whose head (a white band) is near the top: a centred square cuts it off."""
    im = photos.quadrants(200, 400)
    im.paste(WHITE, (0, 10, 200, 30))
    return photos.encode(im, "JPEG")


def test_upper_crop_uploads_the_top_of_a_tall_portrait(controls, slapd, ldap_ou, jira):
    slapd.add_user(ldap_ou, "tall", jpeg_photo=portrait())
    slapd.add_user(ldap_ou, "wide", jpeg_photo=photos.photo(400, 200))
    jira.state.add_user("tall")
    jira.state.add_user("wide")
    services = controls(crop="upper")
    assert job_run.sync_now(services, "tall").outcome == "updated"
    shown = jira.state.selected_avatar("tall").image.convert("RGB")
    assert photos.close(shown.getpixel((100, 20)), WHITE) and photos.close(shown.getpixel((50, 195)), RED)
    assert job_run.sync_now(services, "wide").outcome == "updated"
    c = photos.corners(jira.state.selected_avatar("wide").png)  # a wide photo: centred as ever
    assert photos.close(c["bl"], BLUE)


# -- the directory photo removed ---------------------------------------------------------------

def synced_then_removed(controls, slapd, ldap_ou, jira, name="jdoe", own_upload=False, **settings):
    """A user synced (ours shown), then their directory photo removed."""
    dn = slapd.add_user(ldap_ou, name, jpeg_photo=photos.photo())
    jira.state.add_user(name)
    own = jira.state.upload_as_user(name, photos.solid(BLUE, 64, "PNG")) if own_upload else None
    services = controls(**settings)
    assert job_run.sync_now(services, name).outcome in ("updated", "restored")
    ours = jira.state.selected_avatar(name).id
    slapd.set_photo(dn, "jpegPhoto", None)
    return services, ours, own


def test_photo_removed_keep_leaves_our_picture_as_it_always_did(controls, slapd, ldap_ou, jira):
    services, ours, _ = synced_then_removed(controls, slapd, ldap_ou, jira)
    writes = jira.state.writes()
    assert job_run.sync_now(services, "jdoe").outcome == "no_photo"
    assert jira.state.writes() == writes and jira.state.selected_avatar("jdoe").id == ours


def test_photo_removed_default_selects_jiras_default_then_deletes_ours(controls, slapd, ldap_ou, jira):
    services, ours, _ = synced_then_removed(controls, slapd, ldap_ou, jira, photo_removed="default")
    result = job_run.sync_now(services, "jdoe")
    assert (result.outcome, result.reason) == ("photo_removed", "default: Jira's default avatar selected")
    # selected explicitly (Jira's stored choice is "none", not a dangling id it falls back from)
    assert jira.state.users["jdoe"].avatar_property is None
    assert ours not in jira.state.avatars  # ours deleted, after the default was selected
    assert jira.state.count("PUT /user/avatar") == 2  # our upload's select, then the default's
    writes = jira.state.writes()
    assert job_run.sync_now(services, "jdoe", force=True).outcome == "no_photo"  # and then nothing
    assert jira.state.writes() == writes


def test_photo_removed_user_upload_goes_back_to_the_users_latest_own_upload(controls, slapd, ldap_ou, jira):
    services, ours, own = synced_then_removed(controls, slapd, ldap_ou, jira, own_upload=True,
                                              photo_removed="user_upload")
    older = own
    newer = jira.state.upload_as_user("jdoe", photos.solid(RED, 64, "PNG"))  # then picked ours again
    jira.state.users["jdoe"].avatar_property = ours
    result = job_run.sync_now(services, "jdoe")
    assert result.outcome == "photo_removed" and result.reason == f"user_upload: the user's own avatar {newer} selected"
    assert jira.state.users["jdoe"].avatar_property == newer
    assert ours not in jira.state.avatars and older in jira.state.avatars  # theirs are never deleted
    writes = jira.state.writes()
    assert job_run.sync_now(services, "jdoe", force=True).outcome == "no_photo" and jira.state.writes() == writes


def test_photo_removed_user_upload_without_one_selects_the_default(controls, slapd, ldap_ou, jira):
    services, ours, _ = synced_then_removed(controls, slapd, ldap_ou, jira, photo_removed="user_upload")
    result = job_run.sync_now(services, "jdoe")
    assert result.outcome == "photo_removed" and "Jira's default avatar selected" in result.reason
    assert jira.state.users["jdoe"].avatar_property is None and ours not in jira.state.avatars


def test_photo_removed_keeps_a_picture_the_user_chose_and_deletes_only_ours(controls, slapd, ldap_ou, jira):
    services, ours, _ = synced_then_removed(controls, slapd, ldap_ou, jira, photo_removed="default")
    theirs = jira.state.upload_as_user("jdoe", photos.solid(RED, 64, "PNG"))
    result = job_run.sync_now(services, "jdoe")
    assert result.outcome == "photo_removed" and result.reason == f"kept: the user's own choice, avatar {theirs}"
    assert jira.state.users["jdoe"].avatar_property == theirs and ours not in jira.state.avatars


def test_photo_removed_in_a_sweep_reads_jira_afresh_before_writing(controls, slapd, ldap_ou, jira):
    services, ours, _ = synced_then_removed(controls, slapd, ldap_ou, jira, photo_removed="default")
    jira.state.version = "11.0.0"  # a bulk read of every user: its view is a hint, never a reason to write
    assert sweep_counts(services)["photo_removed"] == 1
    assert jira.state.users["jdoe"].avatar_property is None and ours not in jira.state.avatars
    assert jira.state.count("GET /user", "jdoe") >= 1  # read alone before the writes


def test_photo_removed_from_active_directory(tmp_path, samba, ad_ou, jira, services_for):
    from tests.helpers import samba_directory
    dn = samba.add_user(ad_ou, "adremoved", thumbnail_photo=photos.photo(96, 96))
    jira.state.add_user("adremoved")
    services = services_for(make_settings(tmp_path, jira.url, [samba_directory(ad_ou)], photo_removed="default"))
    assert job_run.sync_now(services, "adremoved").outcome == "updated"
    ours = jira.state.selected_avatar("adremoved").id
    samba.set_photo(dn, "thumbnailPhoto", None)
    assert job_run.sync_now(services, "adremoved").outcome == "photo_removed"
    assert jira.state.users["adremoved"].avatar_property is None and ours not in jira.state.avatars


# -- exclusions ----------------------------------------------------------------------------------

def test_excluded_users_are_not_touched_by_name_group_or_an_admins_opt_out(controls, slapd, ldap_ou, jira):
    for name in ("listed", "grouped", "optedout", "other"):
        slapd.add_user(ldap_ou, name, jpeg_photo=photos.photo())
        jira.state.add_user(name, groups=("jira-software-users", "no-avatar-sync") if name == "grouped"
                            else ("jira-software-users",))
    services = controls(exclude_users=["LISTED"], exclude_groups=["no-avatar-sync", "no-such-group"])
    services.store.set_excluded("optedout", True)
    reasons = {name: job_run.sync_now(services, name) for name in ("listed", "grouped", "optedout", "other")}
    assert {n: r.outcome for n, r in reasons.items()} == {
        "listed": "excluded", "grouped": "excluded", "optedout": "excluded", "other": "updated"}
    assert reasons["grouped"].reason == "member of the Jira group no-avatar-sync (exclude_groups)"
    assert reasons["optedout"].reason == "opted out by an admin"
    assert jira.state.writes() == 3  # other's upload, crop-confirm, select: nothing else
    services.store.set_excluded("optedout", False)
    assert job_run.sync_now(services, "optedout").outcome == "updated"


def test_exclude_groups_past_their_age_are_read_by_one_caller_while_the_others_keep_to_the_copy(
        controls, jira, monkeypatch):
    """Older than GROUPS_CACHE_SECONDS the groups are read again by one caller; the others keep
    to the copy meanwhile (a big group's pages hold up one sync, not all), and while Jira cannot
    answer for up to twice that age. A failed read with no usable copy is raised to every caller
    for RETRY_SECONDS without asking Jira again, then tried again."""
    from app import exclusions
    from app.jira import JiraError
    jira.state.add_user("grouped", groups=("jira-software-users", "no-avatar-sync"))
    clock = module_clock(monkeypatch, "app.exclusions")
    groups = controls(exclude_groups=["no-avatar-sync"]).exclusions
    real_read, reads = groups.read_groups, []
    entered, release = threading.Event(), threading.Event()

    def read():
        reads.append(clock[0])
        entered.set()
        assert release.wait(10)
        return real_read()
    monkeypatch.setattr(groups, "read_groups", read)
    release.set()
    assert groups.group_of("grouped") == "no-avatar-sync" and len(reads) == 1  # the first read
    clock[0] += exclusions.GROUPS_CACHE_SECONDS + 1
    release.clear()
    entered.clear()
    reader = threading.Thread(target=groups.group_of, args=("grouped",))
    reader.start()
    assert entered.wait(10)  # one caller reads them again, and is held there...
    assert groups.group_of("grouped") == "no-avatar-sync"  # ...while this one has the copy at once
    release.set()
    reader.join(10)
    assert len(reads) == 2

    def down():
        reads.append(clock[0])
        raise JiraError("Jira answered 503")
    monkeypatch.setattr(groups, "read_groups", down)
    clock[0] += exclusions.GROUPS_CACHE_SECONDS + 1  # stale, Jira down: the copy stands
    assert groups.group_of("grouped") == "no-avatar-sync" and len(reads) == 3
    clock[0] += exclusions.GROUPS_CACHE_SECONDS  # past twice the age: no guess
    for _ in range(3):  # one try, its failure for every caller meanwhile
        with pytest.raises(JiraError, match="503"):
            groups.group_of("grouped")
    assert len(reads) == 4
    clock[0] += exclusions.RETRY_SECONDS
    with pytest.raises(JiraError):
        groups.group_of("grouped")
    assert len(reads) == 5


def test_an_excluded_user_keeps_even_our_old_picture(controls, slapd, ldap_ou, jira):
    dn = slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    jira.state.add_user("jdoe")
    services = controls(photo_removed="default")
    assert job_run.sync_now(services, "jdoe").outcome == "updated"
    ours = jira.state.selected_avatar("jdoe").id
    services.store.set_excluded("jdoe", True)
    slapd.set_photo(dn, "jpegPhoto", None)  # would be photo_removed, were they not excluded
    writes = jira.state.writes()
    assert job_run.sync_now(services, "jdoe", force=True).outcome == "excluded"
    assert jira.state.writes() == writes and jira.state.selected_avatar("jdoe").id == ours


def test_a_sweep_reports_excluded_users_and_writes_nothing_of_theirs(controls, slapd, ldap_ou, jira):
    for name in ("keeper", "synced"):
        slapd.add_user(ldap_ou, name, jpeg_photo=photos.photo())
        jira.state.add_user(name)
    services = controls()
    services.store.set_excluded("keeper", True)
    assert sweep_counts(services) == {"excluded": 1, "updated": 1, "not_in_directory": 1}  # the last: Jira's admin
    assert jira.state.created_for("keeper") == 0
    services.store.set_excluded("keeper", False)  # the next sweep looks at the user again
    assert sweep_counts(services) == {"unchanged": 1, "updated": 1, "not_in_directory": 1}
    assert jira.state.created_for("keeper") == 1


def test_a_sweep_asks_again_about_users_excluded_by_the_configuration(controls, slapd, ldap_ou, jira):
    """exclude_users can change between sweeps without the user's entry changing."""
    slapd.add_user(ldap_ou, "keeper", jpeg_photo=photos.photo())
    jira.state.add_user("keeper")
    assert sweep_counts(controls(exclude_users=["keeper"])).get("excluded") == 1
    assert sweep_counts(controls()).get("updated") == 1  # taken off the list: synced at the next sweep


# -- the doors: CLI, admin API ---------------------------------------------------------------------

def cli(config, *args):
    """The command line in this process (tests/test_cli.py runs the installed script itself)."""
    from click.testing import CliRunner

    from app.cli import main
    return CliRunner().invoke(main, ["--config", str(config), *args])


def test_cli_sets_an_exclusion_shows_it_and_previews_without_writing(tmp_path, slapd, ldap_ou, jira):
    from tests.test_cli import slapd_toml, write_config
    slapd.add_user(ldap_ou, "tall", jpeg_photo=portrait())
    jira.state.add_user("tall")
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou), extra='crop = "upper"')
    assert cli(config, "exclusion", "tall", "--on").stdout == "tall: excluded (opted out by an admin)\n"
    synced = cli(config, "sync", "tall")
    assert synced.stdout == "tall: excluded (opted out by an admin)\n" and synced.exit_code == 0
    shown = json.loads(cli(config, "exclusion", "tall", "--json").stdout)
    assert shown["exclusion"] == {"excluded": True, "excluded_by_any": True, "reason": "opted out by an admin"}
    out = tmp_path / "tall.png"
    previewed = cli(config, "preview", "tall", "-o", str(out))
    assert previewed.exit_code == 0, previewed.output
    image = Image.open(out).convert("RGB")  # the upper square, as a sync would upload it
    assert image.size == (200, 200) and photos.close(image.getpixel((100, 20)), WHITE)
    assert jira.state.writes() == 0
    assert cli(config, "exclusion", "tall", "--off").stdout == "tall: not excluded\n"
    assert cli(config, "sync", "tall").stdout.startswith("tall: updated")
    missing = cli(config, "preview", "nobody", "-o", str(tmp_path / "n.png"))
    assert missing.exit_code == 1 and missing.stderr == "nobody: no preview: not in any directory\n"


# -- photos from an HTTP server ------------------------------------------------------------------

@pytest.fixture
def photo_server():
    with PhotoServer(token="hr-photo-token-0123456789") as server:
        yield server


def http_photos(server, **extra) -> dict:
    return {"url": server.url, "token": server.token, "timeout": 5, **extra}


def test_an_hr_photo_server_first_in_the_chain_wins(controls, slapd, ldap_ou, jira, photo_server):
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.solid(RED, 96))
    jira.state.add_user("jdoe")
    photo_server.photos["jdoe"] = photos.solid(GREEN, 400)
    services = controls(http_photos=http_photos(photo_server, position="first"))
    result = job_run.sync_now(services, "jdoe")
    assert result.outcome == "updated"
    assert photos.close(photos.dominant(jira.state.selected_avatar("jdoe").png), GREEN)
    assert jira.state.selected_avatar("jdoe").image.size == (256, 256)


def test_last_in_the_chain_the_server_is_asked_only_for_users_without_a_directory_photo(
        controls, slapd, ldap_ou, jira, photo_server):
    slapd.add_user(ldap_ou, "withphoto", jpeg_photo=photos.solid(RED, 96))
    slapd.add_user(ldap_ou, "without")
    slapd.add_user(ldap_ou, "nowhere")
    for name in ("withphoto", "without", "nowhere"):
        jira.state.add_user(name)
    photo_server.photos["withphoto"] = photo_server.photos["without"] = photos.solid(GREEN, 200)
    services = controls(http_photos=http_photos(photo_server))  # position = "last"
    outcomes = {n: job_run.sync_now(services, n) for n in ("withphoto", "without", "nowhere")}
    assert photos.close(photos.dominant(jira.state.selected_avatar("withphoto").png), RED)
    assert photo_server.count("withphoto") == 0  # a photo came before the server in the chain
    assert photos.close(photos.dominant(jira.state.selected_avatar("without").png), GREEN)
    assert outcomes["nowhere"].outcome == "no_photo"  # a 404 means "no photo here"
    assert outcomes["nowhere"].reason == "no thumbnailPhoto/jpegPhoto/http_photos in openldap"


def test_prefer_largest_across_attributes_and_the_server(controls, slapd, ldap_ou, jira, photo_server):
    slapd.add_user(ldap_ou, "jdoe", thumbnail_photo=photos.solid(RED, 96), jpeg_photo=photos.solid(BLUE, 300))
    jira.state.add_user("jdoe")
    photo_server.photos["jdoe"] = photos.solid(GREEN, 200)
    services = controls(prefer="largest", http_photos=http_photos(photo_server, position="first"))
    assert job_run.sync_now(services, "jdoe").outcome == "updated"
    assert photos.close(photos.dominant(jira.state.selected_avatar("jdoe").png), BLUE)  # 300 px beats 200, 96
    photo_server.photos["jdoe"] = photos.solid(GREEN, 480)
    assert job_run.sync_now(services, "jdoe").outcome == "updated"
    assert photos.close(photos.dominant(jira.state.selected_avatar("jdoe").png), GREEN)


def test_an_unchanged_photo_costs_one_304_even_after_a_restart(controls, slapd, ldap_ou, jira, photo_server):
    slapd.add_user(ldap_ou, "jdoe")
    jira.state.add_user("jdoe")
    photo_server.photos["jdoe"] = photos.photo(300, 300)
    assert job_run.sync_now(controls(http_photos=http_photos(photo_server)), "jdoe").outcome == "updated"
    writes = jira.state.writes()
    restarted = controls(http_photos=http_photos(photo_server))  # a new process: the tag is in the database
    assert job_run.sync_now(restarted, "jdoe").outcome == "unchanged"
    assert photo_server.count("jdoe", 304) == 1 and photo_server.count("jdoe", 200) == 1
    assert jira.state.writes() == writes
    # Jira lost our avatar: the bytes are fetched again (the 304 carried none) and uploaded
    jira.state.users["jdoe"].avatar_property = None
    for avatar_id in list(jira.state.avatars):
        if jira.state.avatars[avatar_id].owner == jira.state.users["jdoe"].key:
            del jira.state.avatars[avatar_id]
    assert job_run.sync_now(restarted, "jdoe").outcome == "restored"
    assert photo_server.count("jdoe", 200) == 2
    photo_server.photos["jdoe"] = photos.solid(GREEN, 300)  # a new photo on the server
    assert job_run.sync_now(restarted, "jdoe").outcome == "updated"
    assert photos.close(photos.dominant(jira.state.selected_avatar("jdoe").png), GREEN)


def test_a_failing_or_refusing_photo_server_fails_the_sync_and_writes_nothing(
        controls, slapd, ldap_ou, jira, photo_server):
    slapd.add_user(ldap_ou, "jdoe")
    jira.state.add_user("jdoe")
    photo_server.photos["jdoe"] = photos.photo()
    photo_server.failing = 503
    result = job_run.sync_now(controls(http_photos=http_photos(photo_server)), "jdoe")
    assert result.outcome == "failed" and result.retryable and "answered 503" in result.reason
    photo_server.failing = None
    refused = job_run.sync_now(controls(http_photos=http_photos(photo_server, token="wrong")), "jdoe")
    assert refused.outcome == "failed" and "answered 401" in refused.reason and "wrong" not in refused.reason
    assert jira.state.writes() == 0


def test_a_repeat_sweep_asks_the_server_once_per_user_and_writes_nothing(
        controls, slapd, ldap_ou, jira, photo_server):
    """A photo server's changes move no directory marker: the sweep asks it about each user
    whose picture came from it (one 304 each when nothing changed, and no job), and syncs the
    users whose photo changed there, and those it had no photo of (it may have one now)."""
    from sqlalchemy import select

    from app.sweep import sweep_items
    names = [f"hr{i}" for i in range(6)]
    for name in [*names, "never"]:
        slapd.add_user(ldap_ou, name)
        jira.state.add_user(name)
    for name in names:
        photo_server.photos[name] = photos.photo(200, 200)
    services = controls(http_photos=http_photos(photo_server))
    assert sweep_counts(services) == {"updated": 6, "no_photo": 1, "not_in_directory": 1}  # (the service account)
    writes = jira.state.writes()
    photo_server.photos["hr0"] = photos.solid(GREEN, 200)  # changed on the server, not in the directory
    photo_server.photos["never"] = photos.solid(BLUE, 200)  # and a photo for a user it had none of
    summary = run_sweep(services)
    assert summary["counts"] == {"unchanged": 5, "updated": 2, "not_in_directory": 1}
    with services.store.read() as conn:
        synced = set(conn.execute(select(sweep_items.c.username).where(
            sweep_items.c.sweep_id == summary["id"], ~sweep_items.c.skipped)).scalars())
    assert synced & {*names, "never"} == {"hr0", "never"}  # the others settled by their 304 alone
    assert all(photo_server.count(n, 304, "HEAD") == 1 and photo_server.count(n) == 2 for n in names[1:])
    # the photo went out twice in all: to the first sync, and to the sync after the sweep's question
    assert photo_server.count("hr0", 200, "GET") == 2 and photo_server.count("hr0", 200, "HEAD") == 1
    assert jira.state.writes() == writes + 3 + 1 + 3  # hr0: upload, crop-confirm, select, its old avatar
    # deleted; never: the three
    photo_server.failing = 503  # a server that cannot answer proves nothing: each user is synced, and fails
    writes = jira.state.writes()
    assert run_sweep(services)["counts"] == {"failed": 7, "not_in_directory": 1}
    assert jira.state.writes() == writes
    photo_server.failing = None  # back: each is synced again and finds its photo unchanged (a 304)
    assert run_sweep(services)["counts"] == {"unchanged": 7, "not_in_directory": 1}


def test_a_photo_server_that_knows_no_head_is_asked_with_get(controls, slapd, ldap_ou, jira, photo_server):
    """HEAD answered 405: the sweep's questions go as conditional GETs, and settle the users all
    the same."""
    from sqlalchemy import select

    from app.http_photos import CHECKS_AT_ONCE
    from app.sweep import sweep_items
    names = [f"hr{i}" for i in range(12)]
    for name in names:
        slapd.add_user(ldap_ou, name)
        jira.state.add_user(name)
        photo_server.photos[name] = photos.photo(200, 200)
    services = controls(http_photos=http_photos(photo_server))
    assert sweep_counts(services)["updated"] == 12
    photo_server.head, writes = False, jira.state.writes()
    summary = run_sweep(services)
    assert summary["counts"] == {"unchanged": 12, "not_in_directory": 1}
    with services.store.read() as conn:
        synced = set(conn.execute(select(sweep_items.c.username).where(
            sweep_items.c.sweep_id == summary["id"], ~sweep_items.c.skipped)).scalars())
    assert synced & set(names) == set()  # each settled by its question's 304, as with HEAD
    assert jira.state.writes() == writes
    refused = sum(photo_server.count(n, 405, "HEAD") for n in names)
    assert 1 <= refused <= CHECKS_AT_ONCE  # only the questions already out when the first 405 came
    assert sum(photo_server.count(n, 304, "GET") for n in names) == 12


def test_check_says_whether_the_photo_server_answers_and_takes_the_credentials(
        tmp_path, slapd, ldap_ou, jira, photo_server):
    from tests.test_cli import slapd_toml, write_config
    table = f'[http_photos]\nurl = "{photo_server.url}"\ntoken = "TOKEN"'
    good = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou),
                        extra=table.replace("TOKEN", photo_server.token))
    checked = cli(good, "check")
    assert checked.exit_code == 0 and "photo server: http://127.0.0.1" in checked.stdout, checked.stdout
    bad = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou), extra=table.replace("TOKEN", "wrong-token"))
    refused = cli(bad, "check")
    assert refused.exit_code == 1 and "FAIL photo server: GET" in refused.stdout and "answered 401" in refused.stdout
    assert "wrong-token" not in refused.stdout


def test_check_counts_who_exclude_groups_excludes_and_names_a_group_jira_lacks(tmp_path, slapd, ldap_ou, jira):
    from tests.test_cli import slapd_toml, write_config
    jira.state.add_user("ann", groups=("jira-software-users", "no-avatar-sync"))
    config = write_config(tmp_path, jira.url, slapd_toml(slapd, ldap_ou),
                          extra='exclude_groups = ["no-avatar-sync", "no-such-group"]')
    checked = cli(config, "check")
    assert checked.exit_code == 0, checked.stdout  # a warning, not a failure
    assert "warn exclude_groups: Jira has no group 'no-such-group'" in checked.stdout
    assert "ok   exclude_groups: 1 users excluded by 1 groups" in checked.stdout


def test_preview_fetches_the_server_photo_without_keeping_its_tag(controls, slapd, ldap_ou, jira, photo_server):
    from app.http_photos import http_photos as tags
    slapd.add_user(ldap_ou, "jdoe")
    photo_server.photos["jdoe"] = photos.solid(GREEN, 120)
    services = controls(http_photos=http_photos(photo_server))
    assert photos.close(photos.dominant(services.syncer.preview("jdoe")), GREEN)
    with services.store.read() as conn:
        assert conn.execute(tags.select()).first() is None


def test_active_directorys_96_px_thumbnail_loses_to_the_hr_server(tmp_path, samba, ad_ou, jira, services_for,
                                                                  photo_server):
    from tests.helpers import samba_directory
    samba.add_user(ad_ou, "adhr", thumbnail_photo=photos.solid(RED, 96))
    jira.state.add_user("adhr")
    photo_server.photos["adhr"] = photos.solid(GREEN, 400)
    settings = make_settings(tmp_path, jira.url, [samba_directory(ad_ou)], prefer="largest",
                             http_photos=http_photos(photo_server))
    assert job_run.sync_now(services_for(settings), "adhr").outcome == "updated"
    assert photos.close(photos.dominant(jira.state.selected_avatar("adhr").png), GREEN)
