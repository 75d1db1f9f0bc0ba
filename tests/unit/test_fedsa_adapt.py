import numpy as np
import torch

from fedsa_secure.data import LabelledSet, aggregator_data
from fedsa_secure.fedsa.adapt import adapt, evaluate, scratch
from fedsa_secure.models import backbone_state, flatten_state, make_student

torch.set_num_threads(1)  # 2 shared cores: oversubscribed intra-op threads make training ~30x slower


def test_adapt_fine_tunes_a_copy_with_a_fresh_head_for_the_probe_task():
    probe, test = aggregator_data(0)
    student = make_student(num_classes=3, seed=0)
    before = flatten_state(backbone_state(student))
    adapted = adapt(student, probe, seed=0)
    assert adapted.head.out_features == 10 and student.head.out_features == 3
    assert np.array_equal(flatten_state(backbone_state(student)), before)  # the student is untouched
    assert not np.array_equal(flatten_state(backbone_state(adapted)), before)  # full fine-tune
    assert evaluate(adapted, probe) == 1.0 and evaluate(adapted, test) > 0.6


def test_scratch_is_deterministic_and_equals_adapting_a_fresh_student():
    probe, _ = aggregator_data(0)
    a, b = scratch(probe, seed=4, epochs=3), adapt(make_student(10, seed=4), probe, seed=4, epochs=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_evaluate_counts_correct_predictions():
    probe, _ = aggregator_data(0)
    model = make_student(10, seed=0).eval()
    pred = model(torch.from_numpy(probe.x[:10])).argmax(1).numpy()
    labels = pred.copy()
    labels[:3] = (labels[:3] + 1) % 10
    assert evaluate(model, LabelledSet(probe.x[:10], labels, 10)) == 0.7
