#!/bin/bash
# WAL per transaction, exact count (pgbench -t), single session, with FPI split via pg_walinspect
DB=proto_outbox_lockfree
P="psql -U postgres -h 127.0.0.1 -d $DB -X -Atq"
$P -c "CREATE EXTENSION IF NOT EXISTS pg_walinspect"
for v in a b c4 cr4 d4 e4 f4 g4; do
  l0=$($P -c "select pg_current_wal_lsn()")
  pgbench -U postgres -h 127.0.0.1 -n -c 4 -j 2 -t 500 -f scripts/$v.sql -M prepared $DB > results/walbreak_$v.txt 2>&1
  l1=$($P -c "select pg_current_wal_lsn()")
  $P -F' ' -c "select '$v', pg_wal_lsn_diff('$l1','$l0')::bigint/2000 as total_per_tx,
     (select sum(combined_size - fpi_size)/2000 from pg_get_wal_stats('$l0','$l1')) as nofpi_per_tx,
     (select sum(fpi_size)/2000 from pg_get_wal_stats('$l0','$l1')) as fpi_per_tx,
     (select round(sum(count)::numeric/2000,2) from pg_get_wal_stats('$l0','$l1')) as records_per_tx"
  $P -F' ' -c "select '  $v', \"resource_manager/record_type\", count, round(count::numeric/2000,2) per_tx, round(combined_size::numeric/2000) bytes_per_tx from pg_get_wal_stats('$l0','$l1', true) where count>0 order by combined_size desc limit 8"
done
