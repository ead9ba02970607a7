"""Topology as code: declare topics, queues, DLQs, subscriptions and tables; plan, apply, describe, policy."""

from microbus.topology.describe import describe_topology
from microbus.topology.loading import load_topology, resolve_topology, topology_from_dict
from microbus.topology.model import (
    Daemon,
    Producer,
    Queue,
    Subscription,
    Table,
    Topic,
    Topology,
    handled_media_types,
)
from microbus.topology.plan import Change, ChangeAction, Plan
from microbus.topology.policy import iam_policies, iam_policy
from microbus.topology.reconcile import AppliedTopology, apply_topology, filter_policy, plan_topology

__all__ = [
    "Topology",
    "Topic",
    "Queue",
    "Subscription",
    "Table",
    "Daemon",
    "Producer",
    "handled_media_types",
    "load_topology",
    "resolve_topology",
    "topology_from_dict",
    "plan_topology",
    "apply_topology",
    "AppliedTopology",
    "Plan",
    "Change",
    "ChangeAction",
    "filter_policy",
    "describe_topology",
    "iam_policy",
    "iam_policies",
]
