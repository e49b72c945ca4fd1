#!/usr/bin/env python3
# Usage: python3 models/flame/scripts/check_reference.py models/reference/stage3 models/reference/data 20
# (needs numpy). Recomputes the fixture logits from the checkpoint with the full-sequence
# equations of docs/CHECKPOINT.md in float64, independently of candle and of the trainer.
# independent numpy implementation of docs/CHECKPOINT.md (full sequence, f64)
import json, struct, sys, math
import numpy as np
from math import erf
ck=sys.argv[1]
cfg=json.load(open(ck+'/model.json'))
raw=open(ck+'/model.safetensors','rb').read()
n=struct.unpack('<Q',raw[:8])[0]; hdr=json.loads(raw[8:8+n]); base=8+n
T={}
for k,v in hdr.items():
    if k=='__metadata__': continue
    a,b=v['data_offsets']; T[k]=np.frombuffer(raw[base+a:base+b],dtype='<f4').reshape(v['shape']).astype(np.float64)
D=cfg['d_model']; H=cfg['heads']; N=cfg['experts']; K=cfg['top_k']; eps=cfg['ln_eps']
verf=np.vectorize(erf)
gelu=lambda x: x/2*(1+verf(x/math.sqrt(2)))
def M(name):
    return T[name] if name in T else T[name+'.u']@T[name+'.v']
def ln(x,p):
    mu=x.mean(-1,keepdims=True); var=((x-mu)**2).mean(-1,keepdims=True)
    return (x-mu)/np.sqrt(var+eps)*T[p+'.g']+T[p+'.b']
def softmax(x,ax=-1):
    e=np.exp(x-x.max(ax,keepdims=True)); return e/e.sum(ax,keepdims=True)
mods={m['name']:m for m in cfg['modalities']}
def fwd(task, inputs):
    t=task['stage']; ys=[]
    for m,x in zip(task['modalities'],inputs):
        L,F=mods[m]['tokens'],mods[m]['features']
        X=np.array(x,dtype=np.float64).reshape(L,F)
        x=X@M(f'enc.{m}.w').T+T[f'enc.{m}.b']+T[f'enc.{m}.pos']
        x=ln(math.sqrt(D)*x,f'blk.{m}.ln0'); h=ln(x,f'blk.{m}.ln1')
        q,k,v=[h@T[f'blk.{m}.attn.{p}.w'].T+T[f'blk.{m}.attn.{p}.b'] for p in 'qkv']
        dh=D//H; a=np.zeros((L,D))
        for hh in range(H):
            s=slice(hh*dh,(hh+1)*dh)
            a[:,s]=softmax(q[:,s]@k[:,s].T/math.sqrt(dh))@v[:,s]
        a=a@T[f'blk.{m}.attn.o.w'].T+T[f'blk.{m}.attn.o.b']
        u=ln(a,f'blk.{m}.ln2')
        lg=np.zeros(N)
        for hh in range(t+1):
            sc=softmax(u@T[f'router.{m}.{hh}.query']/math.sqrt(D)); p=sc@u
            g=T[f'router.{m}.{hh}.gate']
            lg+= -np.linalg.norm(p-g,axis=1) if cfg['gating']=='laplace' else g@p
        lg/= (t+1)
        sel=sorted(range(N),key=lambda j:(-lg[j],j))[:K]
        gs=softmax(lg[sel])
        up=np.vstack([np.zeros(D),u,np.zeros(D)])
        y=np.zeros((L,D))
        for gj,j in zip(gs,sel):
            for c in range(t+1):
                p=f'expert.{j}.{c}'
                cin=np.hstack([up[:-2],up[1:-1],up[2:]])
                conv=cin@M(p+'.conv.w').T+T[p+'.conv.b']
                hh_=ln(u+gelu(conv),p+'.ln')
                y+=gj*(gelu(hh_@M(p+'.fc1.w').T+T[p+'.fc1.b'])@M(p+'.fc2.w').T+T[p+'.fc2.b'])
        y=ln(y,f'blk.{m}.lnf'); ys.append(y[-1])
    z=ln(np.concatenate(ys),f"head.{task['name']}.ln")
    return z@T[f"head.{task['name']}.w"].T+T[f"head.{task['name']}.b"]
worst=0
for task in cfg['tasks']:
    fx=json.load(open(f"{sys.argv[2]}/{task['name']}.test.json"))
    tw=0
    for s in fx['samples'][:int(sys.argv[3])]:
        out=fwd(task,s['inputs']); ref=np.array(s['logits'])
        tw=max(tw,np.abs(out-ref).max()/ (np.abs(ref).max()+1e-6))
    print(task['name'], 'max rel diff vs fixture logits', tw); worst=max(worst,tw)
print('worst',worst)
