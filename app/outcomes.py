"""The names every module and every answer uses for how a sync ended (the contract's outcomes),
and the webhook's own answers."""

UPDATED, RESTORED, UNCHANGED = "updated", "restored", "unchanged"
NO_PHOTO, NOT_IN_DIRECTORY, NOT_IN_JIRA = "no_photo", "not_in_directory", "not_in_jira"
INVALID_PHOTO, DISABLED, FAILED = "invalid_photo", "disabled", "failed"
IGNORED, DEBOUNCED = "ignored", "debounced"  # webhook answers, not sync outcomes
OUTCOMES = (UPDATED, RESTORED, UNCHANGED, NO_PHOTO, NOT_IN_DIRECTORY, NOT_IN_JIRA,
            INVALID_PHOTO, DISABLED, FAILED)
SUCCESSES = (UPDATED, RESTORED, UNCHANGED)
# Final for now: nothing more to do until the directory or Jira changes. Each counts as a
# completed sync for the login debounce, so a user without a photo does not cost an LDAP
# search on every Jira request.
SETTLED = SUCCESSES + (NO_PHOTO, NOT_IN_DIRECTORY, NOT_IN_JIRA, INVALID_PHOTO)
