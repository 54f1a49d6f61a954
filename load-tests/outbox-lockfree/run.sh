#!/bin/bash
# usage: run.sh <round> ; writes results/round<r>.tsv and logs
set -u
R=$1
DB=proto_outbox_lockfree
P="psql -U postgres -h 127.0.0.1 -d $DB -X -Atq"
OUT=results; mkdir -p $OUT
VARIANTS="a b c4 c1 cr4 d4 d1 e4 f4 g4"
if [ $((R % 2)) -eq 0 ]; then VARIANTS=$(echo $VARIANTS | tr ' ' '\n' | tac | tr '\n' ' '); fi
echo "round $R start $(date -u +%T) $(uptime)" | tee -a $OUT/load.txt
$P -c "TRUNCATE pgws.outbox, pgws.commits, proto.outbox, proto.outbox2, proto.commits, app_rows"
$P -c "VACUUM ANALYZE pgws.outbox, pgws.commits, pgws.channels, pgws.shards, proto.outbox, proto.outbox2, proto.commits, app_rows"
vmstat -t 1 > $OUT/vmstat_r$R.txt & VM=$!
for N in 1 4 16 64; do
  for v in $VARIANTS; do
    l0=$($P -c "select pg_current_wal_lsn()")
    t0=$(date -u +%T)
    if [ $N -eq 64 ]; then
      ( for i in $(seq 1 16); do sleep 0.5; $P -c "select '$v', coalesce(wait_event_type,'CPU') || ':' || coalesce(wait_event,'-'), count(*) from pg_stat_activity where datname='$DB' and application_name='pgbench' group by 2 order by 3 desc"; done ) > $OUT/waits_r${R}_${v}.txt 2>&1 &
      SAMP=$!
    fi
    pgbench -U postgres -h 127.0.0.1 -n -c $N -j 2 -T 10 -f scripts/$v.sql -M prepared $DB > $OUT/pgbench_r${R}_${v}_${N}.txt 2>&1
    t1=$(date -u +%T)
    l1=$($P -c "select pg_current_wal_lsn()")
    [ $N -eq 64 ] && wait $SAMP
    tps=$(grep -oP 'tps = \K[0-9.]+(?= \(without)' $OUT/pgbench_r${R}_${v}_${N}.txt)
    tx=$(grep -oP 'actually processed: \K[0-9]+' $OUT/pgbench_r${R}_${v}_${N}.txt)
    fail=$(grep -ciE 'error|abort' $OUT/pgbench_r${R}_${v}_${N}.txt)
    wal=$($P -c "select pg_wal_lsn_diff('$l1','$l0')::bigint")
    echo -e "$R\t$v\t$N\t$tps\t$tx\t$wal\t$((wal / (tx>0?tx:1)))\t$t0\t$t1\t$fail" | tee -a $OUT/round$R.tsv
  done
done
kill $VM
echo "round $R end $(date -u +%T) $(uptime)" | tee -a $OUT/load.txt
