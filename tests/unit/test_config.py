"""Config files: unknown, missing and out-of-range keys stop with a message naming the key."""

from pathlib import Path

import pytest

from fedsa_secure.config import BUDGETED, DATASETS, load_aggregator_config, load_node_config
from fedsa_secure.data import FEDERATIONS
from fedsa_secure.errors import ConfigError

AGGREGATOR = """
[aggregator]
listen = "127.0.0.1:0"
run_dir = "run"

[federation]
nodes = ["node-1", "node-2", "node-3", "node-4"]
rounds = 4

[tls]
ca_cert = "keys/ca.pem"
cert = "keys/aggregator.pem"
key = "keys/aggregator.key"
"""

NODE = """
[node]
name = "node-1"
aggregator = "127.0.0.1:5000"
state_dir = "state"

[tls]
ca_cert = "/abs/ca.pem"
cert = "keys/node-1.pem"
key = "keys/node-1.key"

[privacy]
target_epsilon = 4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_valid_aggregator_config_resolves_paths_and_defaults(tmp_path):
    config = load_aggregator_config(write(tmp_path, AGGREGATOR))
    assert config.federation.rounds == 4
    assert config.federation.cohort_size == 3
    assert config.aggregator.run_dir == tmp_path / "run"
    assert config.tls.key == tmp_path / "keys/aggregator.key"
    assert config.threshold == 3
    assert config.secagg.level_bits == 16


def test_valid_node_config_coerces_int_to_float(tmp_path):
    config = load_node_config(write(tmp_path, NODE))
    assert config.privacy.target_epsilon == 4.0 and isinstance(config.privacy.target_epsilon, float)
    assert config.tls.ca_cert == Path("/abs/ca.pem")
    assert config.privacy.delta == 1e-5


def test_unknown_key_names_key_and_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_aggregator_config(write(tmp_path, AGGREGATOR.replace("rounds = 4", "roundz = 4")))
    assert "federation.roundz" in str(err.value) and "rounds" in str(err.value)


def test_unknown_table_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'extra'"):
        load_node_config(write(tmp_path, NODE + "\n[extra]\na = 1\n"))


def test_missing_required_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'node.aggregator'"):
        load_node_config(write(tmp_path, NODE.replace('aggregator = "127.0.0.1:5000"', "")))


def test_out_of_range_value_names_range(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_node_config(write(tmp_path, NODE.replace("target_epsilon = 4", "target_epsilon = -1")))
    assert "privacy.target_epsilon" in str(err.value) and "allowed range" in str(err.value)


def test_bad_choice_lists_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match="allowed values: prv, rdp"):
        load_node_config(write(tmp_path, NODE + 'accountant = "gdp"\n'))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match="'federation.rounds' must be of type int"):
        load_aggregator_config(write(tmp_path, AGGREGATOR.replace("rounds = 4", 'rounds = "four"')))


def test_cohort_larger_than_federation_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cohort_size"):
        load_aggregator_config(write(tmp_path, AGGREGATOR.replace("rounds = 4", "rounds = 4\ncohort_size = 5")))


def test_cohort_below_three_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="federation.min_cohort"):
        load_aggregator_config(write(tmp_path, AGGREGATOR.replace("rounds = 4", "rounds = 4\nmin_cohort = 2")))


def test_missing_and_invalid_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_node_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_node_config(write(tmp_path, "[node\n"))


def test_method_and_dataset_default_to_the_faithful_digits_run(tmp_path):
    fed = load_aggregator_config(write(tmp_path, AGGREGATOR)).federation
    assert (fed.method, fed.dataset, fed.probe_budget) == ("fedsa", "digits", None)
    assert load_node_config(write(tmp_path, NODE)).data.dataset == "digits"


def test_fedsa_plus_on_mnist5k_is_accepted(tmp_path):
    text = AGGREGATOR.replace("rounds = 4", 'rounds = 4\nmethod = "fedsa+"\ndataset = "mnist5k"\nprobe_budget = 0.05')
    fed = load_aggregator_config(write(tmp_path, text)).federation
    assert (fed.method, fed.dataset, fed.probe_budget) == ("fedsa+", "mnist5k", 0.05)
    node = load_node_config(write(tmp_path, NODE + '\n[data]\ndataset = "mnist5k"\n'))
    assert node.data.dataset == "mnist5k"


@pytest.mark.parametrize("key, value, allowed", [
    ("method", '"fedavg"', "allowed values: fedsa, fedsa+"),
    ("dataset", '"cifar"', "allowed values: digits, mnist5k, mnist5k-skew, mnist1d"),
])
def test_unknown_method_or_dataset_names_key_and_allowed_values(tmp_path, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        load_aggregator_config(write(tmp_path, AGGREGATOR.replace("rounds = 4", f"rounds = 4\n{key} = {value}")))
    assert f"'federation.{key}'" in str(err.value) and allowed in str(err.value)


def test_unknown_node_dataset_names_key_and_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match="'data.dataset' is 'cifar'; allowed values: digits, mnist5k, mnist5k-skew, mnist1d"):
        load_node_config(write(tmp_path, NODE + '\n[data]\ndataset = "cifar"\n'))


def test_config_datasets_are_the_federations_the_data_package_has():
    assert DATASETS == tuple(FEDERATIONS)
    assert BUDGETED == tuple(n for n, f in FEDERATIONS.items() if f.probe_budgets)


def test_probe_budget_is_refused_for_digits(tmp_path):
    with pytest.raises(ConfigError, match="probe_budget applies to the mnist5k, mnist5k-skew, mnist1d datasets only"):
        load_aggregator_config(write(tmp_path, AGGREGATOR.replace("rounds = 4", "rounds = 4\nprobe_budget = 0.05")))
    with pytest.raises(ConfigError, match="'federation.probe_budget' is 0.5; allowed range"):
        text = AGGREGATOR.replace("rounds = 4", 'rounds = 4\ndataset = "mnist5k"\nprobe_budget = 0.5')
        load_aggregator_config(write(tmp_path, text))


def test_the_example_configs_load_and_agree_with_each_other():
    examples = Path(__file__).resolve().parents[2] / "examples" / "one-machine"
    aggregator = load_aggregator_config(examples / "aggregator.toml")
    nodes = [load_node_config(examples / f"{name}.toml") for name in aggregator.federation.nodes]
    assert [n.node.name for n in nodes] == list(aggregator.federation.nodes)
    assert {n.data.dataset for n in nodes} == {aggregator.federation.dataset}
    assert aggregator.federation.method in ("fedsa", "fedsa+")


def test_node_local_epochs_default_to_two_and_are_range_checked(tmp_path):
    assert load_node_config(write(tmp_path, NODE)).privacy.local_epochs == 2
    text = NODE.replace("[privacy]", "[privacy]\nlocal_epochs = 1")
    assert load_node_config(write(tmp_path, text)).privacy.local_epochs == 1
    with pytest.raises(ConfigError, match="privacy.local_epochs"):
        load_node_config(write(tmp_path, NODE.replace("[privacy]", "[privacy]\nlocal_epochs = 0")))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_with_the_key_named(tmp_path, value):
    with pytest.raises(ConfigError, match=rf"'privacy.target_epsilon' is {value}; it must be a finite number"):
        load_node_config(write(tmp_path, NODE.replace("target_epsilon = 4", f"target_epsilon = {value}")))
    text = AGGREGATOR.replace("[tls]", f"[secagg]\nclip = {value}\n\n[tls]")
    with pytest.raises(ConfigError, match=r"'secagg.clip'.*finite number"):
        load_aggregator_config(write(tmp_path, text))


def test_a_node_defends_a_minimum_cohort_and_threshold_of_three_by_default(tmp_path):
    config = load_node_config(write(tmp_path, NODE))
    assert (config.node.min_participants, config.node.min_threshold) == (3, 3)
    assert config.node.state_dir == tmp_path / "state" and config.privacy.teacher_share == 0.5
    for key in ("min_participants", "min_threshold"):
        with pytest.raises(ConfigError, match=rf"'node.{key}' is 2; allowed range: 3 to"):
            load_node_config(write(tmp_path, NODE.replace('state_dir = "state"', f'state_dir = "state"\n{key} = 2')))
    with pytest.raises(ConfigError, match=r"'privacy.teacher_share' is 1.0; allowed range: 0.05 to 0.95"):
        load_node_config(write(tmp_path, NODE + "teacher_share = 1.0\n"))
