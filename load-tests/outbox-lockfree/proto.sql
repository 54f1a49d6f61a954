-- Prototype of the lock-free ("numbering by the reader") writer side.
BEGIN;
CREATE SCHEMA IF NOT EXISTS proto;

-- Application table for the "beside a row" variants (b, e, g, c+row).
CREATE TABLE IF NOT EXISTS public.app_rows (id bigserial PRIMARY KEY, v text NOT NULL);

-- The commit-order key: CACHE 1 (the default) is REQUIRED, see REPORT.md.
CREATE SEQUENCE IF NOT EXISTS proto.seq CACHE 1;

-- d/e ("inline"): the send itself takes seq + advisory lock + inserts one row.
CREATE TABLE IF NOT EXISTS proto.outbox (
  seq bigint PRIMARY KEY,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  channel text,
  payload text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- f/g ("deferred"): the send inserts the row (identity id, no lock); a
-- deferred constraint trigger, once per transaction at pre-commit, takes
-- seq + advisory lock and appends one row to proto.commits.
CREATE TABLE IF NOT EXISTS proto.outbox2 (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  channel text,
  payload text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS proto.commits (
  seq bigint PRIMARY KEY,
  xid xid8 NOT NULL,
  first_id bigint NOT NULL,
  last_id bigint NOT NULL,
  committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Same routing as pgws.send (so the CPU per send is comparable).
CREATE OR REPLACE FUNCTION proto.route(payload text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  target text;
  doc json;
BEGIN
  IF payload IS NULL THEN
    RAISE EXCEPTION 'send: payload is NULL' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  IF left(ltrim(payload, E' \t\n\r'), 1) = '{' THEN
    BEGIN
      doc := replace(payload, '\u0000', '\u0020')::json;
      IF json_typeof(doc -> 'channel') = 'string'
         AND (SELECT count(*) FROM json_object_keys(doc) AS k WHERE k = 'channel') = 1 THEN
        target := doc ->> 'channel';
      END IF;
    EXCEPTION WHEN OTHERS THEN
      target := NULL;
    END;
  END IF;
  RETURN target;
END
$$;

-- d/e: inline.
CREATE OR REPLACE FUNCTION proto.send(payload text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  target text := proto.route(payload);
  s bigint;
BEGIN
  PERFORM pg_current_xact_id();              -- xid assigned before the seq is taken
  s := nextval('proto.seq');
  PERFORM pg_advisory_xact_lock(1885828981, (s % 2147483648)::int);
  INSERT INTO proto.outbox (seq, channel, payload) VALUES (s, target, payload);
END
$$;

-- f/g: deferred.
CREATE OR REPLACE FUNCTION proto.send2(payload text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  INSERT INTO proto.outbox2 (channel, payload) VALUES (proto.route(payload), payload);
END
$$;

CREATE OR REPLACE FUNCTION proto.commit_sends() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me xid8 := pg_current_xact_id();
  s bigint;
  last bigint;
BEGIN
  -- once per transaction (the first deferred row event; later ones return)
  IF current_setting('proto.numbered', true) = me::text THEN
    RETURN NULL;
  END IF;
  PERFORM set_config('proto.numbered', me::text, true);
  s := nextval('proto.seq');
  PERFORM pg_advisory_xact_lock(1885828981, (s % 2147483648)::int);
  SELECT max(o.id) INTO last FROM proto.outbox2 o WHERE o.id >= NEW.id AND o.xid = me;
  INSERT INTO proto.commits (seq, xid, first_id, last_id) VALUES (s, me, NEW.id, last);
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS proto_commit_sends ON proto.outbox2;
CREATE CONSTRAINT TRIGGER proto_commit_sends AFTER INSERT ON proto.outbox2
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION proto.commit_sends();
COMMIT;
