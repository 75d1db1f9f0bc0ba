import sys

import numpy as np
import torch

from fedsa_secure.data import federation
from fedsa_secure.fedsa.adapt import AdaptRecipe, adapt, evaluate, scratch
from fedsa_secure.fedsa.amalgamate import apply_update
from fedsa_secure.fedsa.distill import DPDistiller, DPSettings
from fedsa_secure.fedsa.nonprivate import PlainTrainer
from fedsa_secure.fedsa.output_kd import OutputObjective
from fedsa_secure.fedsa.simulation import federation_teachers
from fedsa_secure.models import backbone_state, make_student

torch.set_num_threads(1)
class ExactMap:
    num_classes = 10
    def __init__(self, offset): self.offset = offset
    def probabilities(self, logits):
        out = np.zeros((len(logits), 10)); z = logits - logits.max(1, keepdims=True); p = np.exp(z); p /= p.sum(1, keepdims=True)
        out[:, self.offset:self.offset + 5] = p; return out
private = sys.argv[1] == "dp"; RESTRICT = sys.argv[5] == "r"; DATASET = sys.argv[6] if len(sys.argv) > 6 else "mnist5k"; rounds = int(sys.argv[2]); epochs = int(sys.argv[3]); lr = float(sys.argv[4])
for seed in [0, 1, 2]:
    fed = federation(DATASET); probe, test = fed.aggregator(seed, 0.01)
    teachers = federation_teachers(DATASET, seed, __import__("pathlib").Path("/tmp/avg/teachers"))
    dp = DPSettings(planned_rounds=rounds, local_epochs=epochs, learning_rate=lr)
    trainers = []
    import torch.nn.functional as F
    class Restricted(OutputObjective):
        def __init__(self, *a, support, **k):
            super().__init__(*a, **k); self.block = torch.full((10,), float("-inf")); self.block[list(support)] = 0.0
        def per_sample_loss(self, model, batch):
            logits, _ = model(batch[0])
            if RESTRICT: logits = logits + self.block
            p = batch[1]
            return -(p * torch.where(p > 0, F.log_softmax(logits, dim=1), torch.zeros_like(logits))).sum(dim=1)
    for i, (name, off) in enumerate([("node-1", 0), ("node-2", 5)]):
        data, teacher = teachers[name]
        obj = Restricted(teacher, data, ExactMap(off), seed, support=range(off, off + 5))
        trainers.append(DPDistiller(teacher, data, dp, seed=seed, mechanism_seed=seed * 1000 + i, objective=obj) if private
                        else PlainTrainer(obj, dp, seed=seed * 1000 + i))
    released = ("features", "head")
    student = make_student(10, seed)
    s = evaluate(scratch(probe, seed), test)
    line = []
    for r in range(rounds):
        state = backbone_state(student, released)
        ups = [(t.train_round(state).update if private else t.train_round(state)) for t in trainers]
        apply_update(student, np.mean(ups, axis=0), released)
        line.append(round(evaluate(student, test), 3))
    full = evaluate(adapt(student, probe, seed, AdaptRecipe(fresh_head=False)), test)
    gentle = evaluate(adapt(student, probe, seed, AdaptRecipe(fresh_head=False, learning_rate=1e-3, steps=100)), test)
    print(f"seed {seed} scratch {s:.3f} raw-per-round {line} full {full:.3f} gentle {gentle:.3f}", flush=True)
