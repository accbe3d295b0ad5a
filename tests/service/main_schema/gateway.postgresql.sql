-- Frozen: the DDL create_all ran on main (110f4b2), before there were Alembic revisions.
-- test_migrate.py replays it to prove leadflow migrate upgrades such a database. Never edit.

CREATE TABLE idempotency_keys (
	source_id VARCHAR(64) NOT NULL, 
	key VARCHAR(255) NOT NULL, 
	created_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	status INTEGER, 
	content_type VARCHAR(64), 
	body BYTEA, 
	CONSTRAINT pk_idempotency_keys PRIMARY KEY (source_id, key)
);

CREATE TABLE ledger_outbox (
	lead_id VARCHAR(128) NOT NULL, 
	created_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	request BYTEA NOT NULL, 
	CONSTRAINT pk_ledger_outbox PRIMARY KEY (lead_id)
);

CREATE TABLE pings (
	ping_id VARCHAR(64) NOT NULL, 
	flow_id VARCHAR(64) NOT NULL, 
	source_id VARCHAR(64) NOT NULL, 
	price_micros BIGINT NOT NULL, 
	created_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	expires_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	used_time TIMESTAMP WITH TIME ZONE, 
	CONSTRAINT pk_pings PRIMARY KEY (ping_id)
);

CREATE INDEX ix_pings_expires_time ON pings (expires_time);

CREATE TABLE ledger_outbox_rejected (
	lead_id VARCHAR(128) NOT NULL, 
	created_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	request BYTEA NOT NULL, 
	error TEXT NOT NULL, 
	CONSTRAINT pk_ledger_outbox_rejected PRIMARY KEY (lead_id)
);

CREATE TABLE intake (
	lead_id VARCHAR(128) NOT NULL, 
	flow_id VARCHAR(64) NOT NULL, 
	source_id VARCHAR(64) NOT NULL, 
	submission BYTEA NOT NULL, 
	created_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	claimed_time TIMESTAMP WITH TIME ZONE, 
	finished_time TIMESTAMP WITH TIME ZONE, 
	result BYTEA, 
	CONSTRAINT pk_intake PRIMARY KEY (lead_id)
);

CREATE INDEX ix_intake_created_time ON intake (created_time);
