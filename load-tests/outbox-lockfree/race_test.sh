#!/bin/bash
# Demonstrates the nextval -> advisory lock window and the tombstone fix.
P="psql -U postgres -h 127.0.0.1 -d proto_outbox_lockfree -X -Atq"
$P -f reader_sketch.sql
$P -c "TRUNCATE proto.commits, proto.outbox2; ALTER SEQUENCE proto.seq RESTART WITH 1000"
# writer A: takes seq 1000, stalls 3 s BEFORE its advisory lock (a descheduled backend), then inserts (retrying if tombstoned)
$P -c "DO \$\$ DECLARE s bigint; n int := 0; BEGIN
  LOOP
    s := nextval('proto.seq');
    IF n = 0 THEN PERFORM pg_sleep(3); END IF;
    n := n + 1;
    PERFORM pg_advisory_xact_lock(1885828981, (s % 2147483648)::int);
    INSERT INTO proto.commits (seq, xid, first_id, last_id) VALUES (s, pg_current_xact_id(), 1, 1) ON CONFLICT (seq) DO NOTHING;
    EXIT WHEN FOUND;
    RAISE NOTICE 'writer A: seq % was tombstoned by the reader, retrying', s;
  END LOOP;
  RAISE NOTICE 'writer A committed with seq %', s; END \$\$" &
sleep 0.5
# writer B: seq 1001, commits at once
$P -c "SELECT proto.send2('{\"channel\":\"c1\",\"payload\":\"B\"}')"
echo "naive reader at t=1s: seq 1000 absent, lock free? $($P -c "select pg_try_advisory_lock_shared(1885828981, 1000) and not exists (select 1 from proto.commits where seq = 1000)") (=> naive reader would call 1000 rolled back)"
$P -c "select pg_advisory_unlock_all()" >/dev/null
echo "sketch reader at t=1s returns:"; $P -c "select seq, xid from proto.read_after(999)"
wait
echo "after A: commits table:"; $P -c "select seq, xid from proto.commits order by seq"
echo "sketch reader now, after 1001:"; $P -c "select seq, xid from proto.read_after(1001)"
