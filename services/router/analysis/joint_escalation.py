"""Tried, not kept (router README): escalating by a learned P(rescuable)
from the router score, the verify score and the question kind together
(fitted on train's out-of-fold scores) instead of by the verify score.

    python3 services/router/analysis/joint_escalation.py data S TRAIN_OOF DEV_KINDS

with S, TRAIN_OOF and DEV_KINDS as for kind_allocation.py.
"""
import json
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

data_dir, dev_scores, train_oof, dev_kinds = sys.argv[1:5]
def jl(p): return [json.loads(l) for l in open(p)]
oof={o['id']:o for o in jl(train_oof)}
tr=[r for r in jl(f'{data_dir}/routing-train.jsonl') if r['id'] in oof]
dev=jl(f'{data_dir}/routing-dev.jsonl'); ds={o['id']:o for o in jl(dev_scores)}
dk={o['id']:o['kind'] for o in jl(dev_kinds)}
K=['multiple_choice','numeric','open']
def lg(p): p=np.clip(p,1e-4,1-1e-4); return np.log(p/(1-p))
def feats(r,v,k):
    oh=np.array([[kk==x for x in K] for kk in k],float)
    return np.column_stack([lg(r),lg(v),lg(r)*lg(v)]+[oh[:,i] for i in range(3)]+[oh[:,i]*lg(v) for i in range(3)]+[oh[:,i]*lg(r) for i in range(3)])
rt=np.array([oof[r['id']]['router'] for r in tr]); vt=np.array([oof[r['id']]['verify'] for r in tr]); kt=[oof[r['id']]['kind'] for r in tr]
yt=np.array([r['label_tier']==2 for r in tr])
m=LogisticRegression(C=1.0,max_iter=2000).fit(feats(rt,vt,kt),yt)
rd=np.array([ds[r['id']]['score'] for r in dev]); vd=np.array([ds[r['id']]['verify'] for r in dev]); kd=[dk[r['id']] for r in dev]
jd=m.predict_proba(feats(rd,vd,kd))[:,1]
gain=np.array([float(r['large_ok'])-float(r['small_ok']) for r in dev]); n=len(dev)
resc=np.array([r['label_tier']==2 for r in dev])
print('dev AUC rescuable: verify %.3f joint %.3f router %.3f'%(roc_auc_score(resc,vd),roc_auc_score(resc,jd),roc_auc_score(resc,rd)))
def pol(esc_score, d=0.3403, e=0.117):
    cut=np.quantile(rd,1-d); direct=rd>=cut; rest=np.where(~direct)[0]; k=int(round(e*len(rest)))
    esc=rest[np.argsort(-esc_score[rest],kind='stable')[:k]]
    cost=(direct.sum()+(~direct).sum()/8+k)/n
    return cost,(gain[direct].sum()+gain[esc].sum())/gain.sum()
print('shares kept, escalate by verify: cost %.3f PGR %.3f'%pol(vd))
print('shares kept, escalate by joint:  cost %.3f PGR %.3f'%pol(jd))
# best on the curve for joint at cost 0.5 over direct shares
for d in [0.25,0.30,0.34,0.38]:
    cut=np.quantile(rd,1-d); direct=rd>=cut; rest=np.where(~direct)[0]
    base=(direct.sum()+(~direct).sum()/8)/n; k=int((0.5-base)*n)
    for name,s in [('verify',vd),('joint',jd)]:
        esc=rest[np.argsort(-s[rest],kind='stable')[:max(k,0)]]
        print(f'  direct {d:.2f} {name}: PGR {(gain[direct].sum()+gain[esc].sum())/gain.sum():.3f}')
