"""Ceiling: the student trained centrally, no DP, on every digit-labelled record the federation holds."""
import sys

import numpy as np
import torch

from fedsa_secure.data import LabelledSet, federation
from fedsa_secure.fedsa.adapt import AdaptRecipe, evaluate, scratch

torch.set_num_threads(1)
ds = sys.argv[1]
for seed in [0, 1, 2]:
    fed = federation(ds)
    probe, test = fed.aggregator(seed, 0.01)
    n1, n2 = fed.node("node-1", seed), fed.node("node-2", seed)
    x = np.concatenate([probe.x, n1.train.x, n2.train.x])
    y = np.concatenate([probe.y, n1.train.y, n2.train.y + 5])
    pooled = LabelledSet(x, y, 10)
    recipe = AdaptRecipe(steps=600, batch_size=128)
    s = evaluate(scratch(probe, seed), test)
    c = evaluate(scratch(pooled, seed, recipe), test)
    print(ds, seed, "probe", len(probe), "pooled", len(pooled), f"scratch {s:.3f} pooled-supervised {c:.3f}", flush=True)
