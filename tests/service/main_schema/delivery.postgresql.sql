-- Frozen: the DDL create_all ran on main (110f4b2), before there were Alembic revisions.
-- test_migrate.py replays it to prove leadflow migrate upgrades such a database. Never edit.

CREATE TABLE queued_leads (
	event_id VARCHAR(128) NOT NULL, 
	buyer_id VARCHAR(128) NOT NULL, 
	lead_id VARCHAR(128) NOT NULL, 
	lead_proto BYTEA NOT NULL, 
	sale_price_micros BIGINT NOT NULL, 
	purchase_price_micros BIGINT, 
	queued_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	seq BIGINT NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	batch_id VARCHAR(64), 
	complete_time TIMESTAMP WITH TIME ZONE, 
	CONSTRAINT pk_queued_leads PRIMARY KEY (event_id), 
	CONSTRAINT ck_queued_leads_state CHECK (state IN ('pending', 'sending', 'delivered', 'closed'))
);

CREATE INDEX ix_queued_leads_batch_id ON queued_leads (batch_id);

CREATE INDEX ix_queued_leads_buyer_state ON queued_leads (buyer_id, state, seq);

CREATE TABLE batches (
	id VARCHAR(64) NOT NULL, 
	buyer_id VARCHAR(128) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	create_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	lead_count INTEGER NOT NULL, 
	file_name TEXT NOT NULL, 
	lease_owner VARCHAR(128) NOT NULL, 
	lease_until TIMESTAMP WITH TIME ZONE NOT NULL, 
	request_id VARCHAR(128), 
	resend_of VARCHAR(64), 
	remote_name TEXT, 
	size_bytes BIGINT NOT NULL, 
	tries INTEGER NOT NULL, 
	complete_time TIMESTAMP WITH TIME ZONE, 
	reason TEXT NOT NULL, 
	attempts JSON NOT NULL, 
	CONSTRAINT pk_batches PRIMARY KEY (id), 
	CONSTRAINT ck_batches_status CHECK (status IN ('sending', 'delivered', 'failed')), 
	CONSTRAINT ck_batches_kind CHECK (kind IN ('scheduled', 'manual', 'retry', 'resend')), 
	CONSTRAINT uq_batches_request_id UNIQUE (request_id)
);

CREATE INDEX ix_batches_buyer_created ON batches (buyer_id, create_time);

CREATE INDEX ix_batches_status_lease ON batches (status, lease_until);

CREATE TABLE buyer_schedules (
	buyer_id VARCHAR(128) NOT NULL, 
	schedule TEXT NOT NULL, 
	time_zone VARCHAR(64) NOT NULL, 
	next_run_time TIMESTAMP WITH TIME ZONE, 
	retry_time TIMESTAMP WITH TIME ZONE, 
	failures INTEGER NOT NULL, 
	version BIGINT NOT NULL, 
	CONSTRAINT pk_buyer_schedules PRIMARY KEY (buyer_id)
);

CREATE TABLE outcome_reports (
	event_id VARCHAR(128) NOT NULL, 
	buyer_id VARCHAR(128) NOT NULL, 
	batch_id VARCHAR(64) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	reason TEXT NOT NULL, 
	sale_price_micros BIGINT NOT NULL, 
	attempts JSON NOT NULL, 
	complete_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	next_try_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	tries INTEGER NOT NULL, 
	last_error TEXT NOT NULL, 
	reported_time TIMESTAMP WITH TIME ZONE, 
	CONSTRAINT pk_outcome_reports PRIMARY KEY (event_id), 
	CONSTRAINT ck_outcome_reports_outcome CHECK (outcome IN ('success', 'failure', 'error'))
);

CREATE INDEX ix_outcome_reports_due ON outcome_reports (reported_time, next_try_time);
