-- logtorukun on PostgreSQL, schema 2: the limits several instances count together
-- (db/limits.py): request rate per user, failed sign-ins, open follows per user.
-- depends: 0001.initial

CREATE FUNCTION ltk_now() RETURNS double precision LANGUAGE sql VOLATILE AS $$
    SELECT extract(epoch FROM clock_timestamp())::double precision
$$;

CREATE TABLE limit_buckets (
    key text PRIMARY KEY, tokens double precision NOT NULL, last double precision NOT NULL
);

-- The token bucket of web/security.py's RateLimiter, one row per key, taken atomically.
CREATE FUNCTION limit_take(k text, burst double precision, rate double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    now double precision := ltk_now();
    t double precision;
BEGIN
    INSERT INTO limit_buckets (key, tokens, last) VALUES (k, burst, now)
        ON CONFLICT (key) DO NOTHING;
    SELECT LEAST(burst, tokens + (now - last) * rate) INTO t
        FROM limit_buckets WHERE key = k FOR UPDATE;
    UPDATE limit_buckets SET tokens = CASE WHEN t >= 1 THEN t - 1 ELSE t END, last = now
        WHERE key = k;
    RETURN t >= 1;
END $$;

CREATE TABLE login_failures (key text NOT NULL, at double precision NOT NULL);
CREATE INDEX login_failures_key ON login_failures (key, at);

CREATE TABLE follow_slots (
    id text PRIMARY KEY, "user" text NOT NULL, instance text NOT NULL,
    beat double precision NOT NULL
);
CREATE INDEX follow_slots_user ON follow_slots ("user", beat);

UPDATE audit_meta SET value = '2' WHERE key = 'pg_schema';
