"""The familiar component names are opt-in aliases of microbus's own, refused beside microcosm-pubsub."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
from microcosm.api import create_object_graph, load_from_dict
from microcosm.registry import _registry

import microbus
from microbus import FAMILIAR_NAMES, ConfigurationError, SNSProducer, SQSMessageDispatcher, aliases, use_familiar_names


@pytest.fixture
def clean_registry(monkeypatch):
    """No familiar names bound (importing microbus.compat binds them) during the test; restored after it."""
    factories = {name: factory for name, factory in _registry.factories.items() if name not in FAMILIAR_NAMES}
    monkeypatch.setattr(_registry, "factories", factories)


def graph(**config):
    config.setdefault("aws", {"endpoint_url": "http://127.0.0.1:9"})  # never called; dummy credentials
    return create_object_graph("aliases", testing=True, loader=load_from_dict(config))


def test_microbus_registers_its_own_names_and_not_the_familiar_ones():
    # Given microbus installed (without microcosm-pubsub)
    names = {entry_point.name for entry_point in aliases.entry_points(group="microcosm.factories")}
    # Then every familiar name has a microbus_ counterpart, and no familiar name is registered
    assert set(FAMILIAR_NAMES.values()) <= names
    assert not names & set(FAMILIAR_NAMES)


def test_the_familiar_names_are_the_same_components_once_opted_in(clean_registry):
    # Given the aliases
    use_familiar_names()
    use_familiar_names()  # idempotent
    g = graph(microbus_sns_topic_arns={"default": "arn:aws:sns:us-east-1:123456789012:t"})
    # Then each familiar name is microbus's component itself
    assert g.sns_producer is g.microbus_sns_producer
    assert isinstance(g.sns_producer, SNSProducer)
    assert g.sns_topic_arns is g.microbus_sns_topic_arns
    assert isinstance(g.sqs_message_dispatcher, SQSMessageDispatcher)
    assert g.sqs_message_handler_registry is g.microbus_sqs_message_handler_registry
    assert g.pubsub_message_schema_registry is g.microbus_pubsub_message_schema_registry


def test_configuration_under_a_familiar_name_is_an_error_naming_the_section_to_use(clean_registry):
    # Given the aliases and a config written for microcosm-pubsub
    use_familiar_names()
    g = graph(sns_producer={"max_attempts": 5})
    # When the alias is resolved, then it refuses the section it would silently ignore
    with pytest.raises(ConfigurationError, match="move its keys to 'microbus_sns_producer'"):
        _ = g.sns_producer


def test_the_familiar_names_refuse_to_load_when_another_distribution_registers_them(monkeypatch, clean_registry):
    # Given an environment where another distribution registers sns_producer
    class Dist:
        metadata = {"Name": "microcosm-pubsub"}
        version = "3.0.0"

    foreign = EntryPoint("sns_producer", "microcosm_pubsub.producer:configure_sns_producer", "microcosm.factories")
    monkeypatch.setattr(aliases, "entry_points", lambda group: [foreign._for(Dist())])
    # When aliases are asked for, then they are refused with one sentence naming the distribution
    with pytest.raises(ConfigurationError, match=r"microcosm-pubsub 3\.0\.0 registers sns_producer"):
        use_familiar_names()
    assert "sns_producer" not in _registry.factories


def test_a_familiar_name_bound_to_something_else_is_not_replaced(clean_registry):
    # Given sns_producer bound by the application itself
    def own(graph):
        return "mine"

    _registry.bind("sns_producer", own)
    # When aliases are asked for, then that binding stays and the conflict is named
    with pytest.raises(ConfigurationError, match="already bound"):
        use_familiar_names()
    assert _registry.factories["sns_producer"] is own


def test_the_version_is_the_installed_distributions():
    from importlib.metadata import version

    assert microbus.__version__ == version("microbus")
