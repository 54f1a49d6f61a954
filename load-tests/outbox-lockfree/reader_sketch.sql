-- Sketch (tested for function only, not benchmarked): the reader side of
-- "numbering by the reader", against proto.commits / proto.outbox2, plus the
-- writer fix for the nextval -> advisory-lock race (tombstones).

-- Writer, race-safe: if the reader tombstoned our seq before we inserted it
-- (it saw the seq allocated, our advisory lock not yet taken), take another.
CREATE OR REPLACE FUNCTION proto.commit_sends_safe() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  me xid8 := pg_current_xact_id();
  s bigint;
  last bigint;
BEGIN
  IF current_setting('proto.numbered', true) = me::text THEN RETURN NULL; END IF;
  PERFORM set_config('proto.numbered', me::text, true);
  SELECT max(o.id) INTO last FROM proto.outbox2 o WHERE o.id >= NEW.id AND o.xid = me;
  LOOP
    s := nextval('proto.seq');
    PERFORM pg_advisory_xact_lock(1885828981, (s % 2147483648)::int);
    INSERT INTO proto.commits (seq, xid, first_id, last_id) VALUES (s, me, NEW.id, last)
      ON CONFLICT (seq) DO NOTHING;
    EXIT WHEN FOUND;            -- else: tombstoned by the reader, take the next seq
  END LOOP;
  RETURN NULL;
END
$$;

-- Reader: from `after` (every seq <= after resolved), return the next commit
-- rows in seq order, stopping at the first gap whose transaction may still be
-- committing. A gap whose advisory lock is free is closed with a tombstone
-- (xid 0): the INSERT waits for a concurrent uncommitted insert of that seq
-- (unique index), so a transaction between nextval and its lock either loses
-- the seq (and retries above) or is seen committed. The lock test comes
-- BEFORE the re-read (a fresh snapshot per statement, READ COMMITTED).
CREATE OR REPLACE FUNCTION proto.read_after(after bigint, lim int DEFAULT 1000)
RETURNS SETOF proto.commits
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  r proto.commits;
  want bigint := after + 1;
  g bigint;
BEGIN
  FOR r IN SELECT * FROM proto.commits c WHERE c.seq > after ORDER BY c.seq LIMIT lim LOOP
    g := want;
    WHILE g < r.seq LOOP                          -- a gap below a committed row
      IF NOT pg_try_advisory_lock_shared(1885828981, (g % 2147483648)::int) THEN
        RETURN;                                   -- still committing: stop here
      END IF;
      PERFORM pg_advisory_unlock_shared(1885828981, (g % 2147483648)::int);
      INSERT INTO proto.commits (seq, xid, first_id, last_id)
           VALUES (g, '0'::xid8, 0, -1) ON CONFLICT (seq) DO NOTHING;
      -- present after all (committed meanwhile): hand it out
      RETURN QUERY SELECT * FROM proto.commits c WHERE c.seq = g AND c.xid <> '0'::xid8;
      g := g + 1;
    END LOOP;
    IF r.xid <> '0'::xid8 THEN RETURN NEXT r; END IF;
    want := r.seq + 1;
  END LOOP;
END
$$;
-- Per-channel offsets: the (single, fenced) reader walks the returned rows in
-- seq order, reads outbox2 rows id BETWEEN first_id AND last_id AND xid = xid,
-- and assigns offsets from its own counters (persisted in batches, e.g. one
-- pgws.channels upsert per channel per batch + the cursor), then delivers.
