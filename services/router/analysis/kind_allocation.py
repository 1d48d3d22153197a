"""An upper bound the README cites: the best PGR at cost 0.5 on dev if the
combined policy's two shares were chosen per kind of question (multiple
choice, numeric, open; here by source: MMLU-Pro, GSM8K, the rest) *on dev
itself* — an oracle that overfits the test set, so no policy tuned on
train can be expected to beat it.

    triage-router calibrate --input data/routing-dev.jsonl --scores-out S
    python3 services/router/analysis/kind_allocation.py data S
"""
import sys
import json

import numpy as np
rows=[json.loads(l) for l in open(f'{sys.argv[1]}/routing-dev.jsonl')]
sc={o['id']:o for o in map(json.loads, open(sys.argv[2]))}
def kind(r):
    s=r['source']
    return 'mc' if s.startswith('mmlu') else ('num' if s.startswith('gsm8k') else 'open')
k=np.array([kind(r) for r in rows]); n=len(rows)
small=np.array([r['small_ok'] for r in rows],float); large=np.array([r['large_ok'] for r in rows],float)
gain=large-small; gap=gain.sum()
router=np.array([sc[r['id']]['score'] for r in rows]); verify=np.array([sc[r['id']]['verify'] for r in rows])
grid_d=np.linspace(0,0.8,17); grid_e=np.linspace(0,0.6,13)
opts={}
for kk in ['mc','num','open']:
    idx=np.where(k==kk)[0]; res=[]
    for d in grid_d:
        cut=np.quantile(router[idx],1-d) if d>0 else np.inf
        direct=router[idx]>=cut
        rest=idx[~direct]
        for e in grid_e:
            m=int(round(e*len(rest)))
            esc=rest[np.argsort(-verify[rest],kind='stable')[:m]]
            cost=(direct.sum()+ (len(idx)-direct.sum())/8 + m)/n
            g=gain[idx[direct]].sum()+gain[esc].sum()
            res.append((cost,g,d,e))
    opts[kk]=res
best=None
for a in opts['mc']:
  for b in opts['num']:
    c0=a[0]+b[0]
    if c0>0.5: continue
    for c in opts['open']:
      if c0+c[0]<=0.5:
        g=a[1]+b[1]+c[1]
        if best is None or g>best[0]: best=(g,a,b,c)
print(f"oracle per-kind allocation on dev: PGR {best[0] / gap:.3f} at cost <= 0.5")
for name, (cost, _, d, e) in zip(["multiple choice", "numeric", "open"], best[1:]):
    print(f"  {name}: {d:.0%} straight to tier 2, {e:.0%} of the rest escalated (cost share {cost:.3f})")
