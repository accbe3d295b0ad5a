-- Frozen: the DDL create_all ran on main (110f4b2), before there were Alembic revisions.
-- test_migrate.py replays it to prove leadflow migrate upgrades such a database. Never edit.

CREATE TABLE idempotency_keys (
	source_id VARCHAR(64) NOT NULL, 
	"key" VARCHAR(255) NOT NULL, 
	created_time DATETIME NOT NULL, 
	status INTEGER, 
	content_type VARCHAR(64), 
	body BLOB, 
	CONSTRAINT pk_idempotency_keys PRIMARY KEY (source_id, "key")
);

CREATE TABLE ledger_outbox (
	lead_id VARCHAR(128) NOT NULL, 
	created_time DATETIME NOT NULL, 
	request BLOB NOT NULL, 
	CONSTRAINT pk_ledger_outbox PRIMARY KEY (lead_id)
);

CREATE TABLE pings (
	ping_id VARCHAR(64) NOT NULL, 
	flow_id VARCHAR(64) NOT NULL, 
	source_id VARCHAR(64) NOT NULL, 
	price_micros BIGINT NOT NULL, 
	created_time DATETIME NOT NULL, 
	expires_time DATETIME NOT NULL, 
	used_time DATETIME, 
	CONSTRAINT pk_pings PRIMARY KEY (ping_id)
);

CREATE INDEX ix_pings_expires_time ON pings (expires_time);

CREATE TABLE ledger_outbox_rejected (
	lead_id VARCHAR(128) NOT NULL, 
	created_time DATETIME NOT NULL, 
	request BLOB NOT NULL, 
	error TEXT NOT NULL, 
	CONSTRAINT pk_ledger_outbox_rejected PRIMARY KEY (lead_id)
);

CREATE TABLE intake (
	lead_id VARCHAR(128) NOT NULL, 
	flow_id VARCHAR(64) NOT NULL, 
	source_id VARCHAR(64) NOT NULL, 
	submission BLOB NOT NULL, 
	created_time DATETIME NOT NULL, 
	claimed_time DATETIME, 
	finished_time DATETIME, 
	result BLOB, 
	CONSTRAINT pk_intake PRIMARY KEY (lead_id)
);

CREATE INDEX ix_intake_created_time ON intake (created_time);
