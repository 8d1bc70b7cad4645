-- logtorukun on PostgreSQL, schema 1: the same tables as the SQLite store
-- (audit/schema.py, web/auth.py) plus the limits several instances share.
-- Applied by `logtorukun db upgrade` (yoyo-migrations), as the schema's owner.

CREATE TABLE audit_log (
    seq        bigint PRIMARY KEY,
    ts         text NOT NULL,
    event      text NOT NULL,
    "user"     text,
    roles      text NOT NULL,
    client     text,
    user_agent text,
    action     text,
    host       text,
    source     text,
    params     text NOT NULL,
    decision   text,
    reason     text,
    ref        bigint,
    outcome    text,
    prev_hash  text NOT NULL,
    hash       text NOT NULL
);
CREATE TABLE audit_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE INDEX audit_log_ts ON audit_log (ts);
CREATE INDEX audit_log_user ON audit_log ("user", seq);
CREATE INDEX audit_log_host ON audit_log (host, seq);
CREATE INDEX audit_log_source ON audit_log (source, seq);
CREATE INDEX audit_log_decision ON audit_log (decision, seq);
CREATE INDEX audit_log_event ON audit_log (event, seq);

-- The highest seq ever written (what sqlite_sequence is for SQLite): removing records
-- from the end is then visible to `audit verify`. Only the trigger below moves it.
CREATE SEQUENCE audit_log_high MINVALUE 0 START 0;

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;

CREATE FUNCTION audit_log_next_seq() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NEW.seq IS DISTINCT FROM (SELECT COALESCE(MAX(seq), 0) + 1 FROM public.audit_log) THEN
        RAISE EXCEPTION 'audit_log takes only the next seq';
    END IF;
    PERFORM setval('public.audit_log_high', NEW.seq);
    RETURN NEW;
END $$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_next_seq BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_next_seq();

CREATE TABLE auth_users (
    name text PRIMARY KEY, password_hash text, roles text NOT NULL,
    created double precision NOT NULL, disabled integer NOT NULL DEFAULT 0
);
CREATE TABLE auth_sessions (
    id_hash text PRIMARY KEY, "user" text NOT NULL, csrf text NOT NULL,
    created double precision NOT NULL, expires double precision NOT NULL,
    via text NOT NULL DEFAULT 'password'
);
CREATE INDEX auth_sessions_user ON auth_sessions ("user");
CREATE TABLE auth_tokens (
    id text PRIMARY KEY, "user" text NOT NULL, hash text NOT NULL,
    created double precision NOT NULL, expires double precision,
    revoked integer NOT NULL DEFAULT 0, last_used double precision
);

INSERT INTO audit_meta (key, value) VALUES ('pg_schema', '1');
