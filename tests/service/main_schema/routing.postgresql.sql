-- Frozen: the DDL create_all ran on main (110f4b2), before there were Alembic revisions.
-- test_migrate.py replays it to prove leadflow migrate upgrades such a database. Never edit.

CREATE TABLE cap_counters (
	cap_key VARCHAR(255) NOT NULL, 
	window_start TIMESTAMP WITH TIME ZONE NOT NULL, 
	window_end TIMESTAMP WITH TIME ZONE NOT NULL, 
	used_leads INTEGER NOT NULL, 
	used_micros BIGINT NOT NULL, 
	held_leads INTEGER NOT NULL, 
	held_micros BIGINT NOT NULL, 
	CONSTRAINT pk_cap_counters PRIMARY KEY (cap_key, window_start)
);

CREATE INDEX ix_cap_counters_window_end ON cap_counters (window_end);

CREATE TABLE cap_holds (
	lead_id VARCHAR(128) NOT NULL, 
	scope VARCHAR(64) NOT NULL, 
	cap_key VARCHAR(255) NOT NULL, 
	window_start TIMESTAMP WITH TIME ZONE NOT NULL, 
	micros BIGINT NOT NULL, 
	expires_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_cap_holds PRIMARY KEY (lead_id, scope, cap_key)
);

CREATE INDEX ix_cap_holds_cap_key_window_start ON cap_holds (cap_key, window_start);

CREATE TABLE duplicate_keys (
	flow_id VARCHAR(64) NOT NULL, 
	digest VARCHAR(64) NOT NULL, 
	lead_id VARCHAR(128) NOT NULL, 
	committed BOOLEAN NOT NULL, 
	expires_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_duplicate_keys PRIMARY KEY (flow_id, digest)
);

CREATE INDEX ix_duplicate_keys_expires_time ON duplicate_keys (expires_time);

CREATE TABLE rotation_cursors (
	flow_id VARCHAR(64) NOT NULL, 
	stage_index INTEGER NOT NULL, 
	last_step INTEGER NOT NULL, 
	CONSTRAINT pk_rotation_cursors PRIMARY KEY (flow_id, stage_index)
);

CREATE TABLE stage_sales (
	flow_id VARCHAR(64) NOT NULL, 
	stage_index INTEGER NOT NULL, 
	buyer_id VARCHAR(64) NOT NULL, 
	day VARCHAR(10) NOT NULL, 
	sales INTEGER NOT NULL, 
	last_sold_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_stage_sales PRIMARY KEY (flow_id, stage_index, buyer_id, day)
);
