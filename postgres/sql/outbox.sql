-- postgres-websockets: the durable outbox (schema version 4).
--
-- Applied by pgws-gateway (standalone) or pgws-coordinator (cluster) at
-- start when PGWS_OUTBOX=true, unless PGWS_OUTBOX_MIGRATE=false — then a DBA
-- applies this file instead, as the role that will own schema pgws:
--
--     psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f postgres/sql/outbox.sql
--
-- Idempotent, and safe when several processes apply it at once (an
-- advisory lock serializes them). Needs no superuser, no extension and no
-- wal_level=logical: an ordinary role that may CREATE in the database.
--
-- Applications publish with `SELECT pgws.send(payload)` inside their own
-- transaction; `payload` is what they would pass to pg_notify on the
-- listen channel. A role that publishes needs USAGE on schema pgws (granted
-- to PUBLIC below) and EXECUTE on pgws.send (PostgreSQL's default); the
-- tables stay private to the owner. (What commits while a reader is idle
-- is carried by the doorbell's NOTIFY pgws_outbox, which any role may
-- LISTEN to — as it may to pg_notify on the listen channel.)
--
-- How it keeps commit order without a global lock (docs/architecture.md,
-- "The durable outbox"):
--
-- * pgws.send inserts the row; nothing is locked yet, so a long
--   transaction holds nothing while it works.
-- * At commit, a deferred constraint trigger runs once per transaction: it
--   locks the transaction's shards (rows of pgws.shards, FOR UPDATE: no
--   other role can take them) in ascending order (a channel always maps to
--   the same one of 16 shards; ascending order means no deadlock), gives
--   each channel's messages their offsets from
--   pgws.channels, and appends one row per channel to pgws.commits. The
--   locks are held until the commit ends and a transaction becomes visible
--   before it releases them, so within a shard commits.seq order is commit
--   order: the reader follows each shard with a plain `seq > cursor`, and
--   a transaction that commits late cannot be skipped.
-- * The doorbell: NOTIFY pgws_outbox only when a reader is idle (waiting);
--   a busy reader polls anyway, so under load no transaction pays for
--   NOTIFY's global commit lock. Senders only *try* the doorbell's
--   advisory locks: whatever holds them, no sender and no reader waits.
--
-- Applying this file to a database that already has this version changes
-- nothing; the processes check the version first and apply it only when
-- it is missing or older.

BEGIN;
SELECT pg_advisory_xact_lock(1885828979, -1);

-- USAGE for every role once, when the schema is made: a REVOKE a DBA
-- makes later is kept.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgws') THEN
    CREATE SCHEMA pgws;
    GRANT USAGE ON SCHEMA pgws TO PUBLIC;
  END IF;
END
$$;

CREATE TABLE IF NOT EXISTS pgws.meta (
  key text PRIMARY KEY,
  value text NOT NULL
);

-- What applications sent, uncommitted rows included (invisible until
-- their transaction commits; a rolled-back transaction's rows never are).
CREATE TABLE IF NOT EXISTS pgws.outbox (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
  -- The payload's "channel"; NULL: the channel named like the listen channel.
  channel text,
  payload text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
-- A transaction's rows, in order (the commit trigger, the reader).
CREATE INDEX IF NOT EXISTS outbox_xid_id ON pgws.outbox (xid, id);
DROP INDEX IF EXISTS pgws.outbox_xid;

-- Each channel's sequence: when it was created (the epoch's base, in Unix
-- milliseconds) and its newest offset. One row per channel ever sent on.
CREATE TABLE IF NOT EXISTS pgws.channels (
  channel text PRIMARY KEY, -- '' for the listen channel's namesake
  base bigint NOT NULL,
  last_offset bigint NOT NULL
);

-- One row per committed transaction and channel, in commit order per shard.
CREATE TABLE IF NOT EXISTS pgws.commits (
  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  shard int NOT NULL,
  xid xid8 NOT NULL,
  channel text NOT NULL,
  base bigint NOT NULL,
  first_offset bigint NOT NULL,
  first_id bigint NOT NULL,
  last_id bigint NOT NULL,
  committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS commits_shard_seq ON pgws.commits (shard, seq);
CREATE INDEX IF NOT EXISTS commits_first_id ON pgws.commits (first_id);

-- The shards, one row each: a committing transaction locks its shards'
-- rows (FOR UPDATE), which only the schema's owner can do.
CREATE TABLE IF NOT EXISTS pgws.shards (
  shard int PRIMARY KEY
);
INSERT INTO pgws.shards SELECT generate_series(0, 15) ON CONFLICT DO NOTHING;

-- Readers (their backend pids): a transaction rings the doorbell when one
-- of them is idle. `seqs` is how far each has read, per shard: pruning
-- never passes the slowest live reader.
CREATE TABLE IF NOT EXISTS pgws.readers (
  pid int PRIMARY KEY,
  since timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pgws.readers ADD COLUMN IF NOT EXISTS seqs bigint[];

-- Where a cluster's leader stands, per shard (standalone readers keep
-- theirs in memory). `fence` is the writing leader's fencing epoch.
CREATE TABLE IF NOT EXISTS pgws.cursors (
  name text PRIMARY KEY,
  seqs bigint[] NOT NULL,
  fence bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- The bells' signing key (HMAC-SHA256; pgws.number_sends): any role may
-- NOTIFY pgws_outbox, so the reader takes only what this key signed. `k`
-- is the key, `ik`/`ok` the key padded to SHA-256's block and XORed with
-- HMAC's inner and outer pads. Private to the owner, like every table here.
CREATE TABLE IF NOT EXISTS pgws.bell_key (
  one boolean PRIMARY KEY DEFAULT true CHECK (one),
  k bytea NOT NULL,
  ik bytea NOT NULL,
  ok bytea NOT NULL
);
-- No role but the owner reads it (not even pg_read_all_data; the
-- SECURITY DEFINER functions run as the owner).
ALTER TABLE pgws.bell_key ENABLE ROW LEVEL SECURITY;
DO $$
DECLARE
  k bytea := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');
  padded bytea;
  ik bytea;
  ok bytea;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pgws.bell_key) THEN
    padded := k || decode(repeat('00', 64 - octet_length(k)), 'hex');
    ik := padded;
    ok := padded;
    FOR i IN 0..63 LOOP
      ik := set_byte(ik, i, get_byte(padded, i) # 54);  -- 0x36
      ok := set_byte(ok, i, get_byte(padded, i) # 92);  -- 0x5c
    END LOOP;
    INSERT INTO pgws.bell_key (k, ik, ok) VALUES (k, ik, ok);
  END IF;
END
$$;

-- Pruning deletes old rows in small batches, so the tables stay small
-- between autovacuum runs that start early.
ALTER TABLE pgws.outbox SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 10000,
  autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 100000);
ALTER TABLE pgws.commits SET (autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 10000,
  autovacuum_vacuum_insert_scale_factor = 0.0, autovacuum_vacuum_insert_threshold = 100000);

CREATE OR REPLACE FUNCTION pgws.shards() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 16 $$;

CREATE OR REPLACE FUNCTION pgws.shard_of(channel text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtext(channel) & 15 $$;

-- Transaction-local state of the commit trigger (pgws.committed,
-- pgws.rang, pgws.shards), stored as "<xid>:<value>": a value set for the
-- session (SET, ALTER ROLE … SET, PGOPTIONS, a pooler's leftover) or by
-- another transaction is not this transaction's, and reads as NULL.
CREATE OR REPLACE FUNCTION pgws.mine(setting text) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT CASE WHEN split_part(v, ':', 1) = pg_current_xact_id()::text
              THEN substr(v, strpos(v, ':') + 1) END
    FROM current_setting(setting, true) AS v
$$;
CREATE OR REPLACE FUNCTION pgws.set_mine(setting text, value text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  SELECT set_config(setting, pg_current_xact_id()::text || ':' || value, true);
$$;

-- Publish `payload` when the calling transaction commits; routed by its
-- "channel" field like a NOTIFY on the listen channel. No 8000-byte limit.
CREATE OR REPLACE FUNCTION pgws.send(payload text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  target text;
  doc json;
BEGIN
  IF payload IS NULL THEN
    RAISE EXCEPTION 'pgws.send: payload is NULL' USING ERRCODE = 'null_value_not_allowed';
  END IF;
  -- Routing as the gateway routes a NOTIFY: a JSON object with exactly
  -- one string "channel" (a repeated key goes to the fallback, as there).
  -- PostgreSQL cannot hold \u0000 in text: a copy without it is parsed.
  IF left(ltrim(payload, E' \t\n\r'), 1) = '{' THEN
    BEGIN
      doc := replace(payload, '\u0000', '\u0020')::json;
      IF json_typeof(doc -> 'channel') = 'string'
         AND (SELECT count(*) FROM json_object_keys(doc) AS k WHERE k = 'channel') = 1 THEN
        target := doc ->> 'channel';
      END IF;
    EXCEPTION WHEN OTHERS THEN
      target := NULL; -- not JSON: the listen channel's namesake, as for NOTIFY
    END;
  END IF;
  IF octet_length(target) > 1024 THEN
    RAISE EXCEPTION 'pgws.send: a channel name of % bytes (at most 1024)', octet_length(target)
      USING ERRCODE = 'string_data_right_truncation';
  END IF;
  INSERT INTO pgws.outbox (channel, payload) VALUES (target, payload);
  -- A SERIALIZABLE transaction's shards, for its commit to lock in
  -- ascending order (pgws.number_send): a bit each, transaction-local.
  IF current_setting('transaction_isolation') = 'serializable' THEN
    PERFORM pgws.set_mine('pgws.shards',
      (coalesce(pgws.mine('pgws.shards')::int, 0) | (1 << pgws.shard_of(coalesce(target, ''))))::text);
  END IF;
END
$$;

-- The transaction's new rows (ids above `done`): offsets from
-- pgws.channels and one commit row per channel, shards locked in ascending
-- order. `upto`: the newest id covered. With `announce`, `bell` is what
-- the doorbell carries so that an idle reader delivers without a poll —
-- every commit row with its messages and the shard's previous seq (read
-- under the shard's lock, by a READ COMMITTED statement: every earlier
-- commit of the shard is visible), or NULL when it would not fit in a
-- notification. Called by pgws.commit_sends only. The format: the rows'
-- HMAC-SHA256 under pgws.bell_key in hex and a newline, then per commit
-- row (read by postgres/src/outbox/bell.rs):
--   2 <generation> <shard> <seq> <prev seq> <base> <first offset> <committed ms> <n> <channel bytes>\n
--   <channel>, then n times: <payload bytes>\n<payload>
DROP FUNCTION IF EXISTS pgws.number_sends(xid8, bigint);
CREATE OR REPLACE FUNCTION pgws.number_sends(me xid8, done bigint, announce boolean,
                                             OUT upto bigint, OUT bell text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  r record;
  newest bigint;
  channel_base bigint;
  seq_now bigint;
  prev bigint;
  at timestamptz;
  generation text;
BEGIN
  upto := done;
  IF announce THEN
    bell := '';
    generation := (SELECT m.value FROM pgws.meta m WHERE m.key = 'generation');
  END IF;
  FOR r IN
    SELECT coalesce(o.channel, '') AS channel, pgws.shard_of(coalesce(o.channel, '')) AS shard,
           count(*) AS n, min(o.id) AS first_id, max(o.id) AS last_id,
           sum(octet_length(o.payload)) AS bytes
      FROM pgws.outbox o
     WHERE o.xid = me AND o.id > done
     GROUP BY 1
     ORDER BY 2, 1
  LOOP
    PERFORM 1 FROM pgws.shards WHERE shard = r.shard FOR UPDATE;
    at := clock_timestamp(); -- under the lock: commit times grow with seq
    INSERT INTO pgws.channels AS c (channel, base, last_offset)
         VALUES (r.channel, floor(extract(epoch FROM at) * 1000)::bigint, r.n)
    ON CONFLICT (channel) DO UPDATE SET last_offset = c.last_offset + excluded.last_offset
      RETURNING c.last_offset, c.base INTO newest, channel_base;
    IF bell IS NOT NULL THEN
      prev := (SELECT max(c.seq) FROM pgws.commits c WHERE c.shard = r.shard);
    END IF;
    INSERT INTO pgws.commits (shard, xid, channel, base, first_offset, first_id, last_id, committed_at)
         VALUES (r.shard, me, r.channel, channel_base, newest - r.n + 1, r.first_id, r.last_id, at)
      RETURNING seq INTO seq_now;
    IF bell IS NOT NULL AND r.n <= 64
       AND octet_length(bell) + octet_length(r.channel) + r.bytes + 24 * r.n + 128 < 7800 THEN
      bell := bell || concat_ws(' ', '2', generation, r.shard, seq_now, coalesce(prev, -1), channel_base,
                                newest - r.n + 1, floor(extract(epoch FROM at) * 1000)::bigint,
                                r.n, octet_length(r.channel)) || E'\n' || r.channel
              || (SELECT string_agg(octet_length(o.payload) || E'\n' || o.payload, '' ORDER BY o.id)
                    FROM pgws.outbox o
                   WHERE o.xid = me AND o.id BETWEEN r.first_id AND r.last_id
                     AND coalesce(o.channel, '') = r.channel);
    ELSE
      bell := NULL;
    END IF;
    upto := greatest(upto, r.last_id);
  END LOOP;
  IF octet_length(bell) >= 7800 THEN
    bell := NULL; -- NOTIFY takes less than 8000 bytes: a plain ring
  ELSIF bell IS NOT NULL THEN
    -- Signed: "<HMAC-SHA256 in hex>\n<rows>".
    bell := (SELECT encode(sha256(b.ok || sha256(b.ik || convert_to(bell, 'UTF8'))), 'hex')
              FROM pgws.bell_key b) || E'\n' || bell;
  END IF;
END
$$;
REVOKE ALL ON FUNCTION pgws.number_sends(xid8, bigint, boolean) FROM PUBLIC;

-- The same for one row (`sent_id`, on `sent_channel`): SERIALIZABLE transactions
-- number their sends row by row, from the trigger's NEW, because reading
-- pgws.outbox back (as pgws.number_sends does) takes predicate locks that
-- every concurrent sender's insert conflicts with — most of them would
-- fail. The first row locks every shard the transaction sent on (recorded
-- by pgws.send in pgws.shards), in ascending order, so two transactions
-- never wait for each other's shards crosswise. One commit row per message.
CREATE OR REPLACE FUNCTION pgws.number_send(me xid8, sent_id bigint, sent_channel text, first boolean)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  target text := coalesce(sent_channel, '');
  bits int := coalesce(pgws.mine('pgws.shards')::int, 0)
              | (1 << pgws.shard_of(target));
  newest bigint;
  channel_base bigint;
BEGIN
  IF first THEN
    PERFORM 1 FROM pgws.shards s WHERE bits & (1 << s.shard) <> 0 ORDER BY s.shard FOR UPDATE;
  ELSE
    PERFORM 1 FROM pgws.shards s WHERE s.shard = pgws.shard_of(target) FOR UPDATE;
  END IF;
  INSERT INTO pgws.channels AS c (channel, base, last_offset)
       VALUES (target, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint, 1)
  ON CONFLICT (channel) DO UPDATE SET last_offset = c.last_offset + 1
    RETURNING c.last_offset, c.base INTO newest, channel_base;
  INSERT INTO pgws.commits (shard, xid, channel, base, first_offset, first_id, last_id)
       VALUES (pgws.shard_of(target), me, target, channel_base, newest, sent_id, sent_id);
  RETURN sent_id;
END
$$;
REVOKE ALL ON FUNCTION pgws.number_send(xid8, bigint, text, boolean) FROM PUBLIC;

-- At commit (deferred): offsets, commit rows, the doorbell. Once per
-- transaction (per row when SERIALIZABLE); the rows covered are
-- remembered in pgws.committed.
--
-- A REPEATABLE READ or SERIALIZABLE transaction sees pgws.channels as of
-- its snapshot: when a transaction that committed after that snapshot
-- sent on one of its channels, the offset cannot be taken without a
-- serialization failure. It fails with SQLSTATE 40001 (as any such
-- transaction that updates a row concurrently updated) and says so; the
-- application retries it, or sends from READ COMMITTED, where this never
-- happens.
CREATE OR REPLACE FUNCTION pgws.commit_sends() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me xid8 := pg_current_xact_id();
  done bigint := coalesce(pgws.mine('pgws.committed')::bigint, 0);
  isolation text := current_setting('transaction_isolation');
  upto bigint;
  bell text;
  cause text;
  k record;
  ring boolean := false;
BEGIN
  IF NEW.id <= done THEN
    RETURN NULL;
  END IF;
  IF done = 0 THEN
    -- The doorbell, tried once per transaction. (…, 0) is held shared
    -- from here to the end of the commit: a reader going idle tries it
    -- exclusively and stays busy while any transaction that may have seen
    -- it busy is still committing. A reader's own key is free only while
    -- it is idle: tried and released at once. Only tries: when (…, 0)
    -- cannot be had, ring anyway.
    IF NOT pg_try_advisory_xact_lock_shared(1885828980, 0) THEN
      ring := true;
    ELSE
      FOR k IN SELECT pid FROM pgws.readers LOOP
        IF pg_try_advisory_lock_shared(1885828980, k.pid) THEN
          PERFORM pg_advisory_unlock_shared(1885828980, k.pid);
          ring := true;
          EXIT;
        END IF;
      END LOOP;
    END IF;
    PERFORM pgws.set_mine('pgws.rang', ring::text);
  END IF;
  IF isolation = 'read committed' THEN
    -- The bell carries the messages only where the reader reads the
    -- notification's text byte for byte as the rows' (UTF-8).
    SELECT n.upto, n.bell INTO upto, bell
      FROM pgws.number_sends(me, done, ring AND current_setting('server_encoding') = 'UTF8') AS n;
  ELSE
    BEGIN
      IF isolation = 'serializable' THEN
        upto := pgws.number_send(me, NEW.id, NEW.channel, done = 0);
      ELSE
        upto := (pgws.number_sends(me, done, false)).upto;
      END IF;
    EXCEPTION WHEN serialization_failure THEN
      GET STACKED DIAGNOSTICS cause = MESSAGE_TEXT;
      RAISE EXCEPTION 'pgws.send: this % transaction could not number its sends: %',
          upper(isolation), cause
        USING ERRCODE = 'serialization_failure',
              DETAIL = 'Another transaction sent on one of its channels after its snapshot was taken.',
              HINT = 'Retry the transaction, as for any serialization failure, or call pgws.send from a READ COMMITTED transaction.';
    END;
  END IF;
  PERFORM pgws.set_mine('pgws.committed', upto::text);
  IF bell IS NOT NULL THEN
    PERFORM pg_notify('pgws_outbox', bell);
  ELSIF (done = 0 AND ring)
     OR (done > 0 AND isolation = 'read committed' AND pgws.mine('pgws.rang') = 'true') THEN
    -- A plain ring: the reader polls. (Rows numbered after the first
    -- time — sent by a later deferred trigger — were not in its bell.)
    PERFORM pg_notify('pgws_outbox', '');
  END IF;
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION pgws.commit_sends() FROM PUBLIC;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'pgws_commit_sends'
                 AND tgrelid = 'pgws.outbox'::regclass) THEN
    CREATE CONSTRAINT TRIGGER pgws_commit_sends AFTER INSERT ON pgws.outbox
      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pgws.commit_sends();
  END IF;
END
$$;

INSERT INTO pgws.meta (key, value) VALUES ('generation', '0') ON CONFLICT DO NOTHING;
-- Never moved back by an older file applied by hand.
INSERT INTO pgws.meta AS m (key, value) VALUES ('schema_version', '4')
ON CONFLICT (key) DO UPDATE SET value = excluded.value
  WHERE m.value !~ '^[0-9]+$' OR m.value::int < excluded.value::int;
COMMIT;
