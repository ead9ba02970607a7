"""Loading topologies from YAML/JSON files and references; malformed files fail with a clear sentence."""

from __future__ import annotations

import json

import pytest
from microbus.reference.daemons.orders import TOPOLOGY
from microbus.reference.schemas import OrderPlaced, PaymentCaptured

from microbus.errors import TopologyError
from microbus.topology import Daemon, Queue, Subscription, Topic, load_topology, resolve_topology, topology_from_dict

ORDER, PAYMENT = OrderPlaced.MEDIA_TYPE, PaymentCaptured.MEDIA_TYPE

YAML = """
topics:
  - name: orders
    media_types: [application/vnd.microbus.order.placed]
  - payments
default_topic: payments
queues:
  - name: orders
    visibility_timeout_s: 60
    subscriptions:
      - topic: orders
      - topic: payments
        raw: true
        media_types: [application/vnd.microbus.payment.captured]
  - name: callbacks
    max_receive_count: 3
tables:
  - name: fanin
daemons:
  - class: microbus.reference.daemons.orders:OrdersDaemon
    queue: orders
    sends_to: [callbacks]
    tables: [fanin]
producers:
  - name: api
    produces: [application/vnd.microbus.order.placed]
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_yaml_file_loads_into_the_model(tmp_path):
    topology = load_topology(write(tmp_path, "topology.yaml", YAML))
    assert topology.topics == (Topic(name="orders", media_types=(ORDER,)), Topic(name="payments"))
    orders = topology.queue("orders")
    assert orders.visibility_timeout_s == 60
    assert orders.subscriptions[1] == Subscription(topic="payments", raw=True, media_types=(PAYMENT,))
    assert topology.queue("callbacks") == Queue(name="callbacks", max_receive_count=3)
    # And the daemon's class gives its name, handled media types and handler timeout
    assert topology.daemon("orders") == Daemon(
        name="orders",
        queue="orders",
        handles=(ORDER, PAYMENT),
        handler_timeout_s=10.0,
        sends_to=("callbacks",),
        tables=("fanin",),
    )
    assert topology.filter_media_types(orders, orders.subscriptions[0]) == (ORDER, PAYMENT)


def test_json_and_yaml_give_the_same_topology(tmp_path):
    import yaml

    data = yaml.safe_load(YAML)
    from_json = load_topology(write(tmp_path, "topology.json", json.dumps(data)))
    assert from_json == load_topology(write(tmp_path, "topology.yml", YAML))


def test_a_reference_names_a_module_attribute_or_a_file(tmp_path):
    assert resolve_topology("microbus.reference.daemons.orders:TOPOLOGY") is TOPOLOGY
    assert resolve_topology(str(write(tmp_path, "t.yaml", "topics: [a]"))).topics == (Topic(name="a"),)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "topics: [a\nqueues: []", r"bad.yaml is not valid YAML \(line \d+, column \d+\)"),
        ("bad.json", '{"topics": [', r"bad.json is not valid JSON \(line 1, column 13"),
        ("list.yaml", "- a\n- b", "the topology must be a mapping, not list"),
        ("key.yaml", "topic: [a]", "the topology: unknown key 'topic'"),
        (
            "q.yaml",
            "queues:\n  - name: q\n    visiblity_timeout_s: 5",
            r"queues\[0\]: unknown key 'visiblity_timeout_s'",
        ),
        ("n.yaml", "queues:\n  - visibility_timeout_s: 5", r"queues\[0\]: missing key 'name'"),
        (
            "t.yaml",
            "queues:\n  - name: q\n    visibility_timeout_s: soon",
            r"visibility_timeout_s must be a whole number",
        ),
        ("b.yaml", "queues:\n  - name: q\n    fifo: 'yes'", r"queues\[0\].fifo must be true or false"),
        (
            "s.yaml",
            "queues:\n  - name: q\n    subscriptions:\n      - raw: true",
            r"subscriptions\[0\]: missing key 'topic'",
        ),
        ("l.yaml", "queues: {name: q}", "queues must be a list, not dict"),
        ("r.yaml", "queues:\n  - name: q\n    subscriptions: [{topic: nope}]", "subscribes to unknown topic 'nope'"),
        (
            "c.yaml",
            "daemons:\n  - class: nowhere:Daemon\n    queue: q",
            r"daemons\[0\]: cannot load class 'nowhere:Daemon'",
        ),
    ],
)
def test_malformed_files_fail_with_one_clear_sentence(tmp_path, name, text, message):
    with pytest.raises(TopologyError, match=message):
        load_topology(write(tmp_path, name, text))


def test_a_missing_file_or_module_says_so(tmp_path):
    with pytest.raises(TopologyError, match="Cannot read topology file"):
        load_topology(tmp_path / "absent.yaml")
    with pytest.raises(TopologyError, match="Cannot load topology 'nowhere:TOPOLOGY'"):
        resolve_topology("nowhere:TOPOLOGY")
    with pytest.raises(TopologyError, match="is a str, not a Topology"):
        resolve_topology("microbus.reference.daemons.orders:__name__")


def test_dicts_load_without_files():
    assert topology_from_dict({"topics": ["a"], "default_topic": "a"}).default_topic == "a"
