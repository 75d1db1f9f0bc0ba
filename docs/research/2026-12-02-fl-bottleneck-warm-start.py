"""Does starting the federated student from the Scratch model (trained on the probe) help fedsa+ under DP?"""
import copy
import json
import sys

import torch

import fedsa_secure.fedsa.simulation as sim
from fedsa_secure.data import federation
from fedsa_secure.fedsa.adapt import scratch

torch.set_num_threads(1)
private = sys.argv[1] == "dp"; seeds = [int(s) for s in sys.argv[2].split(",")]; dataset = sys.argv[3] if len(sys.argv) > 3 else "mnist5k"
original = sim.make_student
def warm(num_classes, seed, arch="cnn"):
    probe, _ = federation(dataset).aggregator(seed, 0.01)
    return copy.deepcopy(scratch(probe, seed, arch=arch))
sim.make_student = warm
for seed in seeds:
    r = sim.simulate(seed, 5, 3, method="fedsa+", dataset=dataset, probe_budget=0.01, private=private,
                     aggregation="secure" if private else "plain", teacher_cache=sim.Path("/tmp/avg/teachers"))
    print(json.dumps({"private": private, "seed": seed, "scratch": r["scratch_accuracy"], "final": r["final_accuracy"],
                      "diff": round(100 * (r["final_accuracy"] - r["scratch_accuracy"]), 1),
                      "rounds": [h["accuracy"] for h in r["rounds"]]}), flush=True)
