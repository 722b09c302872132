"""The names every module and every answer uses: how a sync ended (the contract's outcomes),
the webhook's own answers, and the states of a queued job and of a sweep. StrEnums: each is
its name as a string too, in JSON answers, database rows and log lines alike."""

from enum import StrEnum


class Outcome(StrEnum):
    UPDATED = "updated"
    RESTORED = "restored"
    UNCHANGED = "unchanged"
    NO_PHOTO = "no_photo"
    NOT_IN_DIRECTORY = "not_in_directory"
    NOT_IN_JIRA = "not_in_jira"
    INVALID_PHOTO = "invalid_photo"
    DISABLED = "disabled"
    EXCLUDED = "excluded"  # exclude_users, exclude_groups or an admin's opt-out: nothing touched
    PHOTO_REMOVED = "photo_removed"  # the directory photo went away; photo_removed says what then
    FAILED = "failed"


class WebhookAnswer(StrEnum):
    """What a login event came to when no sync was queued for it."""

    IGNORED = "ignored"  # the service's own account
    DEBOUNCED = "debounced"  # synced within login_debounce_seconds


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    FAILED = "failed"  # the last attempt failed; kept until the user's next event


class SweepStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


UPDATED, RESTORED, UNCHANGED = Outcome.UPDATED, Outcome.RESTORED, Outcome.UNCHANGED
NO_PHOTO, NOT_IN_DIRECTORY, NOT_IN_JIRA = Outcome.NO_PHOTO, Outcome.NOT_IN_DIRECTORY, Outcome.NOT_IN_JIRA
INVALID_PHOTO, DISABLED, FAILED = Outcome.INVALID_PHOTO, Outcome.DISABLED, Outcome.FAILED
EXCLUDED, PHOTO_REMOVED = Outcome.EXCLUDED, Outcome.PHOTO_REMOVED
IGNORED, DEBOUNCED = WebhookAnswer.IGNORED, WebhookAnswer.DEBOUNCED
OUTCOMES = tuple(Outcome)
SUCCESSES = (UPDATED, RESTORED, UNCHANGED)
# Final for now: nothing more to do until the directory or Jira changes. Each counts as a
# completed sync for the login debounce, so a user without a photo does not cost an LDAP
# search on every Jira request.
SETTLED = SUCCESSES + (NO_PHOTO, NOT_IN_DIRECTORY, NOT_IN_JIRA, INVALID_PHOTO, EXCLUDED, PHOTO_REMOVED)
