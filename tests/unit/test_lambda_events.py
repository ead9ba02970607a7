"""Malformed Lambda events fail the invocation with a clear error before any handler runs (the batch is retried)."""

from __future__ import annotations

import pytest

from microbus import LambdaEventError, make_lambda_handler


def never_built():
    raise AssertionError("the graph must not be built for a malformed event")


@pytest.mark.parametrize(
    "event",
    [None, "Records", {}, {"Records": "x"}, {"Records": [42]}, {"Records": [{"messageId": ""}]}],
    ids=["none", "string", "no-records", "records-not-a-list", "record-not-a-map", "empty-message-id"],
)
def test_an_event_whose_records_cannot_be_told_apart_fails_the_invocation(event):
    # Given a handler
    handler = make_lambda_handler(never_built)
    # When the event is not an SQS event with a messageId on every record
    # Then the invocation fails with one sentence, and nothing was handled
    with pytest.raises(LambdaEventError, match="retried"):
        handler(event, None)


def test_a_record_without_an_id_fails_the_whole_event_before_its_neighbours_run():
    handler = make_lambda_handler(never_built)
    event = {"Records": [{"messageId": "m-1", "body": "{}"}, {"body": "{}"}]}
    with pytest.raises(LambdaEventError, match="Record 1 of the SQS event has no messageId"):
        handler(event, None)
