-- The schema and rows of a database made by jira-avatar-sync 0.2.0 (before Alembic), for postgresql.
-- Generated once from that release's tables; tests/test_migrations.py adopts and upgrades it.
CREATE TABLE jobs (
	id SERIAL NOT NULL, 
	username VARCHAR(255) NOT NULL, 
	priority INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	force BOOLEAN NOT NULL, 
	again BOOLEAN NOT NULL, 
	source VARCHAR(32) NOT NULL, 
	sweep_id INTEGER, 
	jira_key VARCHAR(255), 
	jira_avatar_id VARCHAR(32), 
	jira_avatar_custom BOOLEAN, 
	attempts INTEGER NOT NULL, 
	next_try_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	lease_owner VARCHAR(128), 
	lease_until TIMESTAMP WITH TIME ZONE, 
	last_error TEXT, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (username)
);
CREATE INDEX jobs_due ON jobs (state, priority, next_try_at);
CREATE INDEX jobs_lease ON jobs (state, lease_until);
CREATE INDEX jobs_sweep ON jobs (sweep_id);
CREATE TABLE schedules (
	name VARCHAR(64) NOT NULL, 
	next_run_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (name)
);
CREATE TABLE sweep_items (
	sweep_id INTEGER NOT NULL, 
	username VARCHAR(255) NOT NULL, 
	display_name VARCHAR(255), 
	directory VARCHAR(255), 
	outcome VARCHAR(32), 
	reason TEXT, 
	skipped BOOLEAN NOT NULL, 
	PRIMARY KEY (sweep_id, username)
);
CREATE TABLE sweeps (
	id SERIAL NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	phase VARCHAR(16) NOT NULL, 
	dry_run BOOLEAN NOT NULL, 
	"full" BOOLEAN NOT NULL, 
	trigger VARCHAR(32) NOT NULL, 
	started_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	finished_at TIMESTAMP WITH TIME ZONE, 
	lease_owner VARCHAR(128), 
	lease_until TIMESTAMP WITH TIME ZONE, 
	error TEXT, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_sweeps_status ON sweeps (status);
CREATE TABLE user_state (
	username VARCHAR(255) NOT NULL, 
	photo_sha256 VARCHAR(64), 
	avatar_id VARCHAR(32), 
	created_avatar_ids TEXT NOT NULL, 
	pending_avatar_id VARCHAR(32), 
	pending_sha256 VARCHAR(64), 
	directory VARCHAR(255), 
	marker VARCHAR(255), 
	last_outcome VARCHAR(32), 
	last_error TEXT, 
	last_attempt_at TIMESTAMP WITH TIME ZONE, 
	last_success_at TIMESTAMP WITH TIME ZONE, 
	attempts INTEGER NOT NULL, 
	last_source VARCHAR(16), 
	last_duration_ms INTEGER, 
	PRIMARY KEY (username)
);
CREATE INDEX user_state_last_attempt ON user_state (last_attempt_at);
CREATE TABLE webhook_deliveries (
	id VARCHAR(255) NOT NULL, 
	received_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_webhook_deliveries_received_at ON webhook_deliveries (received_at);
INSERT INTO jobs (id, username, priority, state, force, again, source, sweep_id, jira_key, jira_avatar_id, jira_avatar_custom, attempts, next_try_at, lease_owner, lease_until, last_error, created_at, updated_at) VALUES (7, 'ann', 10, 'pending', false, false, 'sweep', 2, 'JIRAUSER10100', '10122', false, 1, '2026-11-20 08:35:00+00:00', NULL, NULL, 'Jira: 503 Service Unavailable', '2026-11-20 08:30:00+00:00', '2026-11-20 08:31:00+00:00');
INSERT INTO jobs (id, username, priority, state, force, again, source, sweep_id, jira_key, jira_avatar_id, jira_avatar_custom, attempts, next_try_at, lease_owner, lease_until, last_error, created_at, updated_at) VALUES (8, 'bob', 0, 'running', true, true, 'login', NULL, NULL, NULL, NULL, 1, '2026-11-20 08:30:00+00:00', 'host:123:456', '2026-11-20 08:32:00+00:00', NULL, '2026-11-20 08:30:00+00:00', '2026-11-20 08:30:00+00:00');
INSERT INTO schedules (name, next_run_at) VALUES ('sweep', '2026-11-21 01:30:00+00:00');
INSERT INTO sweep_items (sweep_id, username, display_name, directory, outcome, reason, skipped) VALUES (1, 'jdoe', 'JDoe', 'corp-ad', 'updated', NULL, false);
INSERT INTO sweep_items (sweep_id, username, display_name, directory, outcome, reason, skipped) VALUES (1, 'émile', NULL, 'openldap', 'no_photo', 'no jpegPhoto in openldap', true);
INSERT INTO sweep_items (sweep_id, username, display_name, directory, outcome, reason, skipped) VALUES (2, 'ann', NULL, 'openldap', NULL, NULL, false);
INSERT INTO sweeps (id, status, phase, dry_run, "full", trigger, started_at, finished_at, lease_owner, lease_until, error) VALUES (1, 'finished', 'done', false, false, 'schedule', '2026-11-19 08:30:00+00:00', '2026-11-19 08:33:00+00:00', NULL, NULL, NULL);
INSERT INTO sweeps (id, status, phase, dry_run, "full", trigger, started_at, finished_at, lease_owner, lease_until, error) VALUES (2, 'running', 'syncing', false, true, 'api', '2026-11-20 08:30:00+00:00', NULL, 'host:123:789', '2026-11-20 08:30:30+00:00', NULL);
INSERT INTO user_state (username, photo_sha256, avatar_id, created_avatar_ids, pending_avatar_id, pending_sha256, directory, marker, last_outcome, last_error, last_attempt_at, last_success_at, attempts, last_source, last_duration_ms) VALUES ('jdoe', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', '10401', '["10401"]', NULL, NULL, 'corp-ad', 'uSNChanged=4711', 'updated', NULL, '2026-11-20 08:30:00+00:00', '2026-11-20 08:30:00+00:00', 3, 'login', 212);
INSERT INTO user_state (username, photo_sha256, avatar_id, created_avatar_ids, pending_avatar_id, pending_sha256, directory, marker, last_outcome, last_error, last_attempt_at, last_success_at, attempts, last_source, last_duration_ms) VALUES ('ann', NULL, NULL, '[]', '10500', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 'openldap', NULL, 'failed', 'Jira: 503 Service Unavailable', '2026-11-20 08:31:00+00:00', NULL, 1, 'sweep', NULL);
INSERT INTO user_state (username, photo_sha256, avatar_id, created_avatar_ids, pending_avatar_id, pending_sha256, directory, marker, last_outcome, last_error, last_attempt_at, last_success_at, attempts, last_source, last_duration_ms) VALUES ('émile', NULL, NULL, '[]', NULL, NULL, 'openldap', 'entryCSN=20261120083000.000000Z#000000#000#000000', 'no_photo', 'no jpegPhoto in openldap', '2026-11-20 08:30:00+00:00', '2026-11-20 08:30:00+00:00', 1, 'admin', 9);
INSERT INTO webhook_deliveries (id, received_at) VALUES ('5f0c-delivery-1', '2026-11-20 08:30:00+00:00');
SELECT setval(pg_get_serial_sequence('jobs', 'id'), 8);
SELECT setval(pg_get_serial_sequence('sweeps', 'id'), 2);
