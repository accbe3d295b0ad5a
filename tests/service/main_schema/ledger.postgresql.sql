-- Frozen: the DDL create_all ran on main (110f4b2), before there were Alembic revisions.
-- test_migrate.py replays it to prove leadflow migrate upgrades such a database. Never edit.

CREATE TABLE leads (
	id VARCHAR(128) NOT NULL, 
	flow_id VARCHAR(128) NOT NULL, 
	source_id VARCHAR(128) NOT NULL, 
	fields_json TEXT NOT NULL, 
	currency VARCHAR(3) NOT NULL, 
	submit_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	record_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_leads PRIMARY KEY (id)
);

CREATE INDEX ix_leads_submit_time_source ON leads (submit_time, source_id);

CREATE TABLE source_events (
	lead_id VARCHAR(128) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	reason TEXT NOT NULL, 
	purchase_price_micros BIGINT NOT NULL, 
	price_paid_micros BIGINT NOT NULL, 
	revenue_micros BIGINT NOT NULL, 
	price_audit JSON NOT NULL, 
	duration_ms BIGINT NOT NULL, 
	CONSTRAINT pk_source_events PRIMARY KEY (lead_id), 
	CONSTRAINT ck_source_events_outcome CHECK (outcome IN ('success', 'failure', 'error')), 
	CONSTRAINT ck_source_events_money CHECK (purchase_price_micros >= 0 AND price_paid_micros >= 0 AND revenue_micros >= 0), 
	CONSTRAINT fk_source_events_lead_id_leads FOREIGN KEY(lead_id) REFERENCES leads (id)
);

CREATE TABLE recipient_events (
	id VARCHAR(128) NOT NULL, 
	lead_id VARCHAR(128) NOT NULL, 
	position INTEGER NOT NULL, 
	stage_index INTEGER NOT NULL, 
	stage_name TEXT NOT NULL, 
	strategy TEXT NOT NULL, 
	step_index INTEGER NOT NULL, 
	buyer_id VARCHAR(128) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	reason TEXT NOT NULL, 
	sale_price_micros BIGINT NOT NULL, 
	price_audit JSON NOT NULL, 
	reference TEXT NOT NULL, 
	attempts JSON NOT NULL, 
	duration_ms BIGINT NOT NULL, 
	CONSTRAINT pk_recipient_events PRIMARY KEY (id), 
	CONSTRAINT uq_recipient_events_lead_id UNIQUE (lead_id, position), 
	CONSTRAINT ck_recipient_events_outcome CHECK (outcome IN ('success', 'failure', 'error', 'skip', 'queued')), 
	CONSTRAINT ck_recipient_events_money CHECK (sale_price_micros >= 0), 
	CONSTRAINT fk_recipient_events_lead_id_leads FOREIGN KEY(lead_id) REFERENCES leads (id)
);

CREATE INDEX ix_recipient_events_buyer_id ON recipient_events (buyer_id);

CREATE TABLE postings (
	id VARCHAR(160) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	lead_id VARCHAR(128) NOT NULL, 
	flow_id VARCHAR(128) NOT NULL, 
	source_id VARCHAR(128) NOT NULL, 
	buyer_id VARCHAR(128) NOT NULL, 
	recipient_event_id VARCHAR(128) NOT NULL, 
	feedback_id VARCHAR(128) NOT NULL, 
	debit_account VARCHAR(200) NOT NULL, 
	credit_account VARCHAR(200) NOT NULL, 
	amount_micros BIGINT NOT NULL, 
	currency VARCHAR(3) NOT NULL, 
	effective_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	post_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_postings PRIMARY KEY (id), 
	CONSTRAINT ck_postings_kind CHECK (kind IN ('purchase', 'sale', 'return', 'chargeback')), 
	CONSTRAINT ck_postings_money CHECK (amount_micros >= 0), 
	CONSTRAINT ck_postings_two_accounts CHECK (debit_account <> credit_account), 
	CONSTRAINT fk_postings_lead_id_leads FOREIGN KEY(lead_id) REFERENCES leads (id)
);

CREATE INDEX ix_postings_buyer_report ON postings (effective_time) INCLUDE (buyer_id, kind, amount_micros) WHERE kind IN ('sale', 'return');

CREATE INDEX ix_postings_buyer_kind_time ON postings (buyer_id, kind, effective_time);

CREATE INDEX ix_postings_vendor_report ON postings (effective_time) INCLUDE (source_id, kind, amount_micros) WHERE kind IN ('purchase', 'chargeback');

CREATE INDEX ix_postings_lead ON postings (lead_id);

CREATE TABLE delivery_results (
	recipient_event_id VARCHAR(128) NOT NULL, 
	lead_id VARCHAR(128) NOT NULL, 
	flow_id VARCHAR(128) NOT NULL, 
	source_id VARCHAR(128) NOT NULL, 
	buyer_id VARCHAR(128) NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	reason TEXT NOT NULL, 
	sale_price_micros BIGINT NOT NULL, 
	complete_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	batch BOOLEAN NOT NULL, 
	batch_id TEXT NOT NULL, 
	attempts JSON NOT NULL, 
	record_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_delivery_results PRIMARY KEY (recipient_event_id), 
	CONSTRAINT ck_delivery_results_outcome CHECK (outcome IN ('success', 'failure', 'error')), 
	CONSTRAINT ck_delivery_results_money CHECK (sale_price_micros >= 0), 
	CONSTRAINT fk_delivery_results_recipient_event_id_recipient_events FOREIGN KEY(recipient_event_id) REFERENCES recipient_events (id), 
	CONSTRAINT fk_delivery_results_lead_id_leads FOREIGN KEY(lead_id) REFERENCES leads (id)
);

CREATE INDEX ix_delivery_results_lead_buyer ON delivery_results (lead_id, buyer_id);

CREATE INDEX ix_delivery_results_report ON delivery_results (complete_time) INCLUDE (buyer_id, outcome, sale_price_micros);

CREATE TABLE feedback (
	id VARCHAR(128) NOT NULL, 
	lead_id VARCHAR(128) NOT NULL, 
	recipient_event_id VARCHAR(128) NOT NULL, 
	buyer_id VARCHAR(128) NOT NULL, 
	flow_id VARCHAR(128) NOT NULL, 
	source_id VARCHAR(128) NOT NULL, 
	type VARCHAR(16) NOT NULL, 
	reason TEXT NOT NULL, 
	amount_micros BIGINT NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	outcome_reason TEXT NOT NULL, 
	initial_status VARCHAR(16) NOT NULL, 
	return_to_source BOOLEAN NOT NULL, 
	sale_time TIMESTAMP WITH TIME ZONE, 
	create_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_feedback PRIMARY KEY (id), 
	CONSTRAINT ck_feedback_type CHECK (type IN ('return', 'conversion')), 
	CONSTRAINT ck_feedback_outcome CHECK (outcome IN ('success', 'failure')), 
	CONSTRAINT ck_feedback_status CHECK (initial_status IN ('approved', 'pending', 'denied')), 
	CONSTRAINT ck_feedback_money CHECK (amount_micros >= 0), 
	CONSTRAINT fk_feedback_lead_id_leads FOREIGN KEY(lead_id) REFERENCES leads (id), 
	CONSTRAINT fk_feedback_recipient_event_id_recipient_events FOREIGN KEY(recipient_event_id) REFERENCES recipient_events (id)
);

CREATE UNIQUE INDEX uq_feedback_one_conversion ON feedback (buyer_id, lead_id) WHERE type = 'conversion' AND outcome = 'success';

CREATE INDEX ix_feedback_lead ON feedback (lead_id);

CREATE UNIQUE INDEX uq_feedback_one_return ON feedback (buyer_id, lead_id) WHERE type = 'return' AND outcome = 'success';

CREATE INDEX ix_feedback_buyer_time ON feedback (buyer_id, create_time);

CREATE INDEX ix_feedback_event ON feedback (recipient_event_id);

CREATE TABLE feedback_decisions (
	feedback_id VARCHAR(128) NOT NULL, 
	decision VARCHAR(16) NOT NULL, 
	decide_time TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_feedback_decisions PRIMARY KEY (feedback_id), 
	CONSTRAINT ck_feedback_decisions_decision CHECK (decision IN ('approved', 'denied')), 
	CONSTRAINT fk_feedback_decisions_feedback_id_feedback FOREIGN KEY(feedback_id) REFERENCES feedback (id)
);

CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'ledger rows are append-only: % on % refused', TG_OP, TG_TABLE_NAME
    USING ERRCODE = 'restrict_violation';
END
$$;

CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON "leads" FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON "leads" FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON "postings" FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON "postings" FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON "recipient_events" FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON "recipient_events" FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON "source_events" FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON "source_events" FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON "delivery_results" FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON "delivery_results" FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON "feedback" FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON "feedback" FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only BEFORE UPDATE OR DELETE ON "feedback_decisions" FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

CREATE OR REPLACE TRIGGER append_only_truncate BEFORE TRUNCATE ON "feedback_decisions" FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
