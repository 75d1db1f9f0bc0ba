"""Alternative split: the whole budget on the DP teacher (epsilon 8), distillation on the aggregator's probe images only
(public: no further cost, no DP noise in the rounds). Same selection, cohort, rounds and adaptation as fedsa+ secure.

Ran at commit 2917382 (`python 2026-12-06-public-distillation.py 0 1 2`, output in the .jsonl beside it); the module
it imports from, fedsa_secure.fedsa.simulation, has since moved to fedsa_secure.experiment.simulation."""
import sys, json
import numpy as np, torch
from pathlib import Path
torch.set_num_threads(1)
from fedsa_secure.data import federation, NodeData, LabelledSet
from fedsa_secure.fedsa.simulation import federation_teachers, teacher_seed
from fedsa_secure.fedsa.teacher import TeacherPrivacy
from fedsa_secure.fedsa.distill import DPSettings
from fedsa_secure.fedsa.output_kd import OutputObjective, fit_output_map
from fedsa_secure.fedsa.nonprivate import PlainTrainer
from fedsa_secure.fedsa.select_plus import output_transferability, concentrated_probabilities
from fedsa_secure.fedsa.saliency import draw_cohort
from fedsa_secure.fedsa.amalgamate import TailAverage, apply_update
from fedsa_secure.fedsa.adapt import AdaptRecipe, adapt, scratch, evaluate
from fedsa_secure.models import make_student, make_teacher, backbone_state

ROUNDS = 30
for seed in map(int, sys.argv[1:]):
    fed = federation("mnist1d"); probe, test = fed.aggregator(seed, 0.01)
    teachers = federation_teachers("mnist1d", seed, Path("/tmp/exp/teachers"), TeacherPrivacy(8.0, 1e-5, "prv"))
    names = list(fed.nodes)
    scores = [output_transferability(t.model, t.data.task, probe, make_teacher(t.data.train.num_classes, teacher_seed(seed, i)))
              for i, t in enumerate(teachers.values())]
    probs = concentrated_probabilities(scores)
    trainers = {}
    for i, (n, t) in enumerate(teachers.items()):
        public = NodeData(n, t.data.task, LabelledSet(probe.x, probe.y, 10))  # the probe images stand in for records
        obj = OutputObjective(t.model, public, fit_output_map(t.model, t.data.task, probe), seed)
        trainers[n] = PlainTrainer(obj, DPSettings(local_epochs=1, batch_size=64), seed=seed * 1000 + i)
    rng = np.random.default_rng(seed)
    student = make_student(10, seed); parts = ("features", "head"); tail = TailAverage(5, parts)
    for r in range(ROUNDS):
        cohort = draw_cohort(names, probs, 3, rng)
        state = backbone_state(student, parts)
        updates = [trainers[n].train_round(state) for n in cohort]
        apply_update(student, np.mean(updates, axis=0), parts); tail.add(student)
    recipe = AdaptRecipe(fresh_head=False, batch_size=64)
    acc = evaluate(adapt(tail.averaged(student), probe, seed, recipe), test)
    base = evaluate(scratch(probe, seed, AdaptRecipe(batch_size=64)), test)
    print(json.dumps({"seed": seed, "public_distillation": acc, "scratch": base, "gain": acc - base}), flush=True)
