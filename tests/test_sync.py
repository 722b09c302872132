"""The sync rules (the README's table "The rules") end to end: real slapd, the Jira emulator."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from app import job_run
from app.queue import jobs
from app.tables import utcnow
from app.worker import WorkerPool
from tests import photos
from tests.helpers import make_settings, slapd_directory, wait_until
from tests.photos import BLUE, GREEN, RED, YELLOW
from tests.rig.ports import free_port


@pytest.fixture
def rig(tmp_path, slapd, ldap_ou, jira, services_for):
    class Rig:
        def __init__(self):
            self.slapd, self.ou, self.jira, self.state = slapd, ldap_ou, jira, jira.state
            self.settings = make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou)])
            self.services = services_for(self.settings)

        def user(self, name, photo=None, thumbnail=None, in_jira=True):
            dn = slapd.add_user(ldap_ou, name, jpeg_photo=photo, thumbnail_photo=thumbnail)
            if in_jira:
                self.state.add_user(name)
            return dn

        def sync(self, name, attempt=None, dry_run=False, **kw):
            """As an admin's sync now runs (the user's own job; attempt None), as a worker runs
            a queued job's attempt, or as a dry run (nothing written)."""
            syncer = self.services.syncer
            if dry_run:
                return syncer.dry_run(name, **kw)
            if attempt is None and not kw.keys() - {"force"}:
                return job_run.sync_now(self.services, name, **kw)
            verdict = syncer.attempt(name, attempt=attempt or 1, **kw)
            with self.services.store.transaction() as tx:
                syncer.record([verdict], tx)
            return syncer.finish(verdict, recorded=True)

        def process_died(self):
            """The process that held the jobs is gone (kill -9): their leases are a dead pid's."""
            queue = self.services.queue
            with queue.store.transaction() as conn:
                conn.execute(update(jobs).values(lease_owner=queue.owner_prefix + "999999:1"))

        def lease_lapsed(self):
            """The jobs' leases ran out, nobody having renewed them."""
            with self.services.queue.store.transaction() as conn:
                conn.execute(update(jobs).values(lease_until=utcnow() - timedelta(seconds=1)))

        def shown(self, name):
            return self.state.selected_avatar(name)
    return Rig()


def test_first_sync_uploads_a_square_upright_picture(rig):
    rig.user("jdoe", photos.photo(300, 200))
    result = rig.sync("jdoe")
    assert result.outcome == "updated", result
    avatar = rig.shown("jdoe")
    assert avatar.id == result.avatar_id and avatar.owner == rig.state.users["jdoe"].key
    c = photos.corners(avatar.png)  # centred square of a 300x200 quadrant picture
    assert photos.close(c["tl"], RED) and photos.close(c["tr"], GREEN)
    assert photos.close(c["bl"], BLUE) and photos.close(c["br"], YELLOW)
    # the upload went through temporary -> crop-confirm -> select
    assert rig.state.count("POST /user/avatar/temporary") == 1
    assert rig.state.count("POST /user/avatar") == 1
    assert rig.state.count("PUT /user/avatar") == 1


def test_second_sync_is_unchanged_with_zero_writes_and_no_decode(rig, monkeypatch):
    rig.user("jdoe", photos.photo())
    assert rig.sync("jdoe").outcome == "updated"
    writes = rig.state.writes()

    import app.sync
    monkeypatch.setattr(app.sync, "normalize", lambda *a, **k: pytest.fail("decoded an unchanged photo"))
    result = rig.sync("jdoe")
    assert result.outcome == "unchanged"
    assert rig.state.writes() == writes


def test_changed_photo_replaces_and_deletes_our_previous_avatar(rig):
    dn = rig.user("jdoe", photos.solid(RED))
    first = rig.sync("jdoe")
    rig.slapd.set_photo(dn, "jpegPhoto", photos.solid(BLUE))
    second = rig.sync("jdoe")
    assert second.outcome == "updated" and second.avatar_id != first.avatar_id
    assert photos.close(photos.dominant(rig.shown("jdoe").png), BLUE)
    assert first.avatar_id not in rig.state.avatars  # ours, so cleaned up
    assert [a.id for a in rig.state.custom_avatars("jdoe")] == [second.avatar_id]


def test_user_upload_is_overridden_by_reselecting_ours_and_never_deleted(rig):
    rig.user("jdoe", photos.solid(RED))
    ours = rig.sync("jdoe").avatar_id
    own = rig.state.upload_as_user("jdoe", photos.solid(GREEN, fmt="PNG"))
    writes = rig.state.writes()

    result = rig.sync("jdoe")
    assert result.outcome == "restored" and result.avatar_id == ours
    assert rig.shown("jdoe").id == ours
    assert rig.state.writes() == writes + 1  # only the select: nothing uploaded again
    assert own in rig.state.avatars  # the user's own upload stays
    assert rig.sync("jdoe").outcome == "unchanged"


def test_restored_by_uploading_again_when_our_avatar_was_deleted(rig):
    rig.user("jdoe", photos.solid(RED))
    ours = rig.sync("jdoe").avatar_id
    del rig.state.avatars[ours]  # someone deleted it in Jira
    result = rig.sync("jdoe")
    assert result.outcome == "restored" and result.avatar_id != ours
    assert photos.close(photos.dominant(rig.shown("jdoe").png), RED)


def test_changed_photo_after_user_upload_keeps_the_user_upload(rig):
    dn = rig.user("jdoe", photos.solid(RED))
    ours = rig.sync("jdoe").avatar_id
    own = rig.state.upload_as_user("jdoe", photos.solid(GREEN, fmt="PNG"))
    rig.slapd.set_photo(dn, "jpegPhoto", photos.solid(BLUE))
    assert rig.sync("jdoe").outcome == "updated"
    assert own in rig.state.avatars and ours not in rig.state.avatars


def test_no_photo_leaves_jira_untouched(rig):
    rig.user("jdoe")
    own = rig.state.upload_as_user("jdoe", photos.solid(GREEN, fmt="PNG"))
    writes = rig.state.writes()
    assert rig.sync("jdoe").outcome == "no_photo"
    assert rig.state.writes() == writes and rig.shown("jdoe").id == own


def test_removed_photo_keeps_the_last_picture(rig):
    dn = rig.user("jdoe", photos.solid(RED))
    ours = rig.sync("jdoe").avatar_id
    rig.slapd.set_photo(dn, "jpegPhoto", None)
    assert rig.sync("jdoe").outcome == "no_photo"
    assert rig.shown("jdoe").id == ours


def test_not_in_directory_and_not_in_jira(rig):
    rig.state.add_user("ghost")
    assert rig.sync("ghost").outcome == "not_in_directory"
    rig.user("ldaponly", photos.photo(), in_jira=False)
    assert rig.sync("ldaponly").outcome == "not_in_jira"
    assert rig.state.writes() == 0


@pytest.mark.parametrize("bad", [b"not an image at all", photos.photo()[:300],
                                 b"GIF89a" + b"\x00" * 40])
def test_invalid_photo_is_reported_and_touches_nothing(rig, bad):
    rig.user("jdoe", bad)
    result = rig.sync("jdoe")
    assert result.outcome == "invalid_photo" and "jpegPhoto" in result.reason
    assert rig.state.writes() == 0
    assert rig.services.store.get("jdoe").last_outcome == "invalid_photo"


def test_first_attribute_with_a_value_wins(rig):
    rig.user("both", photos.solid(RED), thumbnail=photos.solid(BLUE))
    rig.sync("both")  # default order: thumbnailPhoto, jpegPhoto
    assert photos.close(photos.dominant(rig.shown("both").png), BLUE)


def test_per_directory_attribute_override(tmp_path, slapd, ldap_ou, jira, services_for):
    settings = make_settings(tmp_path, jira.url,
                             [slapd_directory(slapd, ldap_ou, photo_attributes=["jpegPhoto"])])
    slapd.add_user(ldap_ou, "both", jpeg_photo=photos.solid(RED), thumbnail_photo=photos.solid(BLUE))
    jira.state.add_user("both")
    job_run.sync_now(services_for(settings), "both")
    assert photos.close(photos.dominant(jira.state.selected_avatar("both").png), RED)


def test_disabled_when_attribute_list_is_empty(tmp_path, slapd, ldap_ou, jira, services_for):
    settings = make_settings(tmp_path, jira.url, [slapd_directory(slapd, ldap_ou, photo_attributes=["jpegPhoto"])],
                             photo_attributes=[])
    slapd.add_user(ldap_ou, "jdoe", jpeg_photo=photos.photo())
    jira.state.add_user("jdoe")
    assert job_run.sync_now(services_for(settings), "jdoe").outcome == "disabled"
    assert jira.state.writes() == 0


def test_dry_run_reports_the_outcome_with_zero_writes(rig):
    dn = rig.user("jdoe", photos.solid(RED))
    assert rig.sync("jdoe", dry_run=True).outcome == "updated"
    assert rig.state.writes() == 0 and rig.services.store.get("jdoe") is None
    rig.sync("jdoe")
    rig.state.upload_as_user("jdoe", photos.solid(GREEN, fmt="PNG"))
    writes = rig.state.writes()
    assert rig.sync("jdoe", dry_run=True).outcome == "restored"
    rig.slapd.set_photo(dn, "jpegPhoto", b"garbage")
    assert rig.sync("jdoe", dry_run=True).outcome == "invalid_photo"
    assert rig.state.writes() == writes


def test_force_uploads_again(rig):
    rig.user("jdoe", photos.solid(RED))
    first = rig.sync("jdoe").avatar_id
    forced = rig.sync("jdoe", force=True)
    assert forced.outcome == "updated" and forced.avatar_id != first
    assert first not in rig.state.avatars


def test_jira_outage_fails_retryably_and_stores_no_hash(rig):
    rig.user("jdoe", photos.solid(RED))
    rig.state.inject(503, path="/rest/api/2/user/avatar", seconds=30)
    result = rig.sync("jdoe")
    assert result.outcome == "failed" and result.retryable and "503" in result.reason
    state = rig.services.store.get("jdoe")
    assert state.photo_sha256 is None and state.last_outcome == "failed"
    rig.state.faults.clear()
    assert rig.sync("jdoe").outcome == "updated"


def test_crash_between_upload_and_select_leaves_no_orphan(rig, monkeypatch):
    dn = rig.user("jdoe", photos.solid(RED))
    rig.sync("jdoe")
    rig.slapd.set_photo(dn, "jpegPhoto", photos.solid(BLUE))
    jira_client = rig.services.jira
    real_select = jira_client.select_avatar
    monkeypatch.setattr(jira_client, "select_avatar", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    assert rig.sync("jdoe").outcome == "failed"
    monkeypatch.setattr(jira_client, "select_avatar", real_select)
    uploads = rig.state.count("POST /user/avatar/temporary")
    result = rig.sync("jdoe")
    assert result.outcome == "updated"
    # the avatar uploaded before the crash is used: the same photo is not uploaded twice
    assert rig.state.count("POST /user/avatar/temporary") == uploads
    assert [a.id for a in rig.state.custom_avatars("jdoe")] == [rig.shown("jdoe").id] == [result.avatar_id]
    assert photos.close(photos.dominant(rig.shown("jdoe").png), BLUE)
    assert rig.sync("jdoe").outcome == "unchanged"


def _killed_after_select(rig, monkeypatch):
    """Syncs jdoe but dies after Jira selected the avatar and before the store noted it."""
    syncer = rig.services.syncer
    real_record = syncer.record
    monkeypatch.setattr(syncer, "record", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
    assert rig.sync("jdoe").outcome == "failed"
    monkeypatch.setattr(syncer, "record", real_record)
    rig.process_died()  # with the job it ran: the next sync takes it at once


def test_crash_after_select_before_recording_does_not_upload_again(rig, monkeypatch):
    rig.user("jdoe", photos.solid(RED))
    _killed_after_select(rig, monkeypatch)
    writes = rig.state.writes()
    assert rig.sync("jdoe").outcome == "updated"
    assert rig.state.writes() == writes  # already selected in Jira: only recorded now
    assert rig.sync("jdoe").outcome == "unchanged"


@pytest.mark.parametrize("hostile", ["*", "*)(uid=*", "a\\b", "admin)(|(objectClass=*", "jdoe*",
                                     "(jdoe)", "jdoe\x00", "", "x" * 300])
def test_hostile_usernames_find_nobody(rig, hostile):
    rig.user("jdoe", photos.photo())
    rig.user("admin", photos.photo())
    assert rig.sync(hostile).outcome == "not_in_directory"


def test_odd_but_real_usernames_find_exactly_that_user(rig):
    for name in ["a\\b", "o'brien", "x*y", "p(q)"]:
        rig.user(name, photos.solid(RED))
        assert rig.sync(name).outcome == "updated", name


@pytest.mark.parametrize("first, then", [(None, None), (1, 2), (1, 1)],
                         ids=["sync now", "queued job", "queued job started afresh by a new event"])
def test_crash_between_confirm_and_noting_the_id_does_not_upload_again(rig, monkeypatch, first, then):
    """Jira created the avatar but the process died before writing its id down.

    No note "upload began" is written first: the retry (or the failure it recorded) is the
    sign to look. An admin's sync now is the user's job too, so its next run is a retry."""
    rig.user("jdoe", photos.solid(RED))
    store = rig.services.store
    real = store.remember_created
    notes = []

    def dies_after_jira_answered(username, avatar_id, photo_hash=None):
        notes.append(avatar_id)
        if avatar_id is not None:
            raise RuntimeError("killed")
        real(username, avatar_id, photo_hash)
    monkeypatch.setattr(store, "remember_created", dies_after_jira_answered)
    assert rig.sync("jdoe", attempt=first).outcome == "failed"
    assert len(notes) == 1 and notes[0] is not None  # the id, the one write before the outcome's
    monkeypatch.setattr(store, "remember_created", real)
    created = rig.state.count("POST /user/avatar")
    result = rig.sync("jdoe", attempt=then)
    assert result.outcome == "updated"
    assert rig.state.count("POST /user/avatar") == created  # found by its file name, not made again
    assert [a.id for a in rig.state.custom_avatars("jdoe")] == [result.avatar_id] == [rig.shown("jdoe").id]


def test_users_own_upload_with_any_name_is_never_adopted(rig):
    rig.user("jdoe", photos.solid(RED))
    own = rig.state.upload_as_user("jdoe", photos.solid(GREEN, fmt="PNG"))
    result = rig.sync("jdoe")
    assert result.avatar_id != own and own in rig.state.avatars


def test_a_sweeps_stale_view_of_jira_never_causes_a_write(rig):
    """A sweep read Jira in bulk before a login (or a killed run) synced the user."""
    rig.user("jdoe", photos.solid(RED))
    stale = rig.services.jira.get_user("jdoe")  # still showing Jira's default avatar
    assert rig.sync("jdoe").outcome == "updated"
    writes = rig.state.writes()
    assert rig.sync("jdoe", jira_user=stale).outcome == "unchanged"
    assert rig.state.writes() == writes
    # ...but a real choice of the user's is still seen through the stale view and undone
    rig.state.upload_as_user("jdoe", photos.solid(GREEN, fmt="PNG"))
    assert rig.sync("jdoe", jira_user=stale).outcome == "restored"


def test_stale_view_after_a_crash_past_select_makes_no_second_select(rig, monkeypatch):
    rig.user("jdoe", photos.solid(RED))
    stale = rig.services.jira.get_user("jdoe")
    _killed_after_select(rig, monkeypatch)
    writes = rig.state.writes()
    assert rig.sync("jdoe", jira_user=stale).outcome == "updated"
    assert rig.state.writes() == writes


def test_the_outcome_and_the_jobs_end_commit_together_or_neither_does(rig, monkeypatch):
    """The worker records the outcome and ends the job in one transaction: when that cannot be
    written, neither happened, the job keeps its lease, and its next run uploads nothing new."""
    from app.queue import LoginQueue
    rig.user("jdoe", photos.solid(RED))
    services = rig.services
    pool, queue = WorkerPool(services, threads=1), services.queue
    queue.enqueue("jdoe")
    real_complete = queue.complete

    def dies(job, tx):
        real_complete(job, tx)
        raise RuntimeError("killed while ending the job")
    monkeypatch.setattr(queue, "complete", dies)
    pool.process(queue.claim(1)[0])
    assert rig.shown("jdoe").owner  # Jira shows the new picture...
    state = services.store.get("jdoe")
    assert state is None or state.photo_sha256 is None  # ...but nothing of it was recorded
    assert queue.job_for("jdoe")["state"] == "running"  # and the job was not ended
    monkeypatch.setattr(queue, "complete", real_complete)
    with services.store.transaction() as tx:  # its lease runs out
        tx.execute(update(jobs).values(lease_until=jobs.c.created_at))
    uploads = rig.state.count("POST /user/avatar")
    restarted = LoginQueue(services.store)  # as a worker started afresh looks for expired leases
    pool.process(restarted.claim(1)[0])
    assert services.store.get("jdoe").last_outcome == "updated" and queue.job_for("jdoe") is None
    assert rig.state.count("POST /user/avatar") == uploads  # the avatar made before is used


def test_an_admins_sync_now_meeting_a_worker_still_running_the_user_answers_failed_and_runs_after(rig):
    """A sync now waits for a worker's run of the user; if that outlasts the wait, the admin is
    told so (failed, retryable), nothing is uploaded beside the worker's run, and the sync the
    admin asked for runs after it. Without a worker in the way, it runs and ends its job."""
    import threading

    rig.user("jdoe", photos.solid(RED))
    queue = rig.services.queue
    queue.enqueue("jdoe")
    claimed, done = [], threading.Event()

    def worker():  # another thread's lease: it claims, and ends the job once told (its owner is the thread)
        claimed.extend(queue.claim(1))
        done.wait(30)
        with queue.store.transaction() as tx:
            queue.complete(claimed, tx)
    running = threading.Thread(target=worker)
    running.start()
    wait_until(lambda: claimed, 10, "the worker to claim the job")
    result = job_run.sync_now(rig.services, "jdoe", wait=0.5)
    assert (result.outcome, result.retryable) == ("failed", True) and "worker" in result.reason
    assert rig.state.writes() == 0
    done.set()  # the worker's run ends
    running.join()
    assert queue.job_for("jdoe")["state"] == "pending"  # the run the admin asked for, still to come
    result = job_run.sync_now(rig.services, "JDoe")
    assert (result.username, result.outcome, result.source) == ("JDoe", "updated", "admin")
    assert queue.job_for("jdoe") is None and rig.services.store.get("jdoe").last_outcome == "updated"


def test_a_sync_now_not_recorded_holds_the_job_until_its_lease_lapses_and_says_so(rig, monkeypatch):
    """Its outcome could not be written (the database away): the job stays leased, so that it
    runs again once the lease lapses and not at once (no loop of uploads). Meanwhile another
    sync now answers when that is, without uploading beside it."""
    rig.user("jdoe", photos.solid(RED))
    syncer = rig.services.syncer
    real_record = syncer.record
    monkeypatch.setattr(syncer, "record", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("database gone")))
    assert rig.sync("jdoe").outcome == "failed"
    monkeypatch.setattr(syncer, "record", real_record)
    writes = rig.state.writes()
    until = rig.services.queue.held_until("jdoe")
    result = job_run.sync_now(rig.services, "jdoe", wait=0)
    assert (result.outcome, result.retryable) == ("failed", True) and rig.state.writes() == writes
    assert "could not be recorded" in result.reason and f"lapses at {until:%H:%M:%S} UTC" in result.reason
    rig.lease_lapsed()
    assert rig.sync("jdoe").outcome == "updated"  # Jira shows it already: only recorded now
    assert rig.state.writes() == writes and rig.services.queue.job_for("jdoe") is None


def test_an_admins_sync_now_takes_at_once_the_job_of_a_killed_worker(rig):
    rig.user("jdoe", photos.solid(RED))
    queue = rig.services.queue
    queue.enqueue("jdoe")
    queue.claim(1)
    rig.process_died()  # its worker's process is gone; its lease runs on
    assert job_run.sync_now(rig.services, "jdoe", wait=0).outcome == "updated"


def test_a_running_worker_takes_back_at_once_the_job_of_a_killed_process(rig):
    """An admin's CLI sync, or a worker, killed mid-way: the service's running workers see its
    process gone within seconds and sync the user, instead of waiting for the lease to lapse."""
    rig.user("jdoe", photos.solid(RED))
    queue = rig.services.queue
    queue.enqueue("jdoe")
    queue.claim(1)
    pool = WorkerPool(rig.services, threads=1)  # running already: its start looked before the kill
    assert not pool.run_once()
    rig.process_died()
    pool.maintain()
    assert pool.run_once() and queue.job_for("jdoe") is None
    assert rig.shown("jdoe") is not None and rig.state.writes() > 0


def test_a_dry_run_writes_nothing(rig):
    rig.user("jdoe", photos.solid(RED))
    assert rig.sync("jdoe", dry_run=True).outcome == "updated"
    assert rig.services.store.get("jdoe") is None and rig.state.writes() == 0


def test_an_old_avatar_whose_deletion_failed_goes_at_the_next_restore(rig):
    """Rule 5 at a later sync: ours stay listed until Jira confirms they are gone."""
    dn = rig.user("jdoe", photos.solid(RED))
    first = rig.sync("jdoe").avatar_id
    rig.slapd.set_photo(dn, "jpegPhoto", photos.solid(BLUE))
    rig.state.inject(403, path=f"/rest/api/2/user/avatar/{first}", method="DELETE", count=1)
    assert rig.sync("jdoe").outcome == "updated"
    assert first in rig.state.avatars  # Jira refused the delete
    own = rig.state.upload_as_user("jdoe", photos.solid(GREEN, fmt="PNG"))
    assert rig.sync("jdoe").outcome == "restored"
    assert first not in rig.state.avatars and own in rig.state.avatars


def test_prefetch_picks_each_users_entry_as_the_lookup_would(tmp_path, slapd, ldap_ou, jira, services_for):
    """A worker's batch is read in one search per directory, and rule 3 still holds: the first
    directory holding the user wins, and a doubt there (a user held twice, an outage) never
    lets a lower directory answer; such a user is left to the lookup of its own."""
    upper, lower = ldap_ou, slapd.add_ou(ldap_ou.split(",")[0][3:] + "-lower")
    with slapd.admin() as c:  # a second branch of the upper directory
        c.add(f"ou=more,{upper}", ["organizationalUnit"], {"ou": "more"})
    for base, name, photo in [(upper, "both", b"upper"), (lower, "both", b"lower"), (lower, "onlylower", b"lower"),
                              (upper, "twin", b"a"), (f"ou=more,{upper}", "twin", b"b"), (lower, "twin", b"lower")]:
        slapd.add_user(base, name, jpeg_photo=photo)
    dirs = [slapd_directory(slapd, upper, name="upper"), slapd_directory(slapd, lower, name="lower")]
    syncer = services_for(make_settings(tmp_path, jira.url, dirs)).syncer
    found = syncer.photos.prefetch(["both", "onlylower", "twin", "nobody"])
    assert {n: (e.directory, e.photo) for n, e in found.items()} == {
        "both": ("upper", b"upper"), "onlylower": ("lower", b"lower")}

    dirs[0]["urls"] = [f"ldap://127.0.0.1:{free_port()}"]  # the upper directory is down
    syncer = services_for(make_settings(tmp_path, jira.url, dirs)).syncer
    assert syncer.photos.prefetch(["both", "onlylower"]) == {}
