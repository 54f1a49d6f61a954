import glob, statistics, collections
rows = []
for f in sorted(glob.glob('results/round*.tsv')):
    for line in open(f):
        p = line.rstrip('\n').split('\t')
        rows.append(dict(r=int(p[0]), v=p[1], n=int(p[2]), tps=float(p[3]), tx=int(p[4]), wal=int(p[5]), walpt=int(p[6]), t0=p[7], t1=p[8]))
V = ['a','b','c4','c1','cr4','d4','d1','e4','f4','g4']
rounds = sorted({x['r'] for x in rows})
d = {(x['r'],x['v'],x['n']): x for x in rows}
for r in rounds:
    print(f"\n### Round {r} (tps)\n")
    print('| variant | ' + ' | '.join(f'N={n}' for n in (1,4,16,64)) + ' |')
    print('|---|' + '---|'*4)
    for v in V:
        print(f'| {v} | ' + ' | '.join(f"{d[(r,v,n)]['tps']:,.0f}" if (r,v,n) in d else '—' for n in (1,4,16,64)) + ' |')
print(f"\n### Median over rounds {rounds} (tps)\n")
print('| variant | ' + ' | '.join(f'N={n}' for n in (1,4,16,64)) + ' | WAL bytes/tx (median of all runs) |')
print('|---|' + '---|'*5)
for v in V:
    cells = []
    for n in (1,4,16,64):
        xs = [d[(r,v,n)]['tps'] for r in rounds if (r,v,n) in d]
        cells.append(f"{statistics.median(xs):,.0f}" if xs else '—')
    w = [x['walpt'] for x in rows if x['v']==v]
    print(f'| {v} | ' + ' | '.join(cells) + f' | {statistics.median(w):.0f} (min {min(w)}, max {max(w)}) |')
