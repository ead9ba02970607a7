"""microbus: media-typed SNS/SQS publish/subscribe for Python services."""

from microbus.codecs import PubSubMessageCodec, PubSubMessageSchema
from microbus.consumer import BatchAcker, QueueInfo, SQSConsumer
from microbus.daemon import ConsumerDaemon
from microbus.dispatch import Action, Middleware, Outcome, Result, RetryPolicy, SQSMessageDispatcher, compute_backoff
from microbus.errors import (
    CodecError,
    ConfigurationError,
    DecodeError,
    EndpointUnreachableError,
    FanInStateError,
    IgnoreMessage,
    MessageTooLargeError,
    MessageValidationError,
    MicrobusError,
    Nack,
    PatternError,
    PublishError,
    QueueNotFoundError,
    ResponseNotSerializableError,
    ResponseTooLargeError,
    SkipMessage,
    TopicNotDefinedError,
    TopicNotFoundError,
    TransientTransportError,
    TransportError,
)
from microbus.fanin import CallbackDaemon, CallbackRunner, FanInStore
from microbus.message import SQSMessage
from microbus.parallel import Parallel, callback, current_cid, register_target
from microbus.producer import SNSProducer, TopicArns
from microbus.registry import HandlerRegistry, SchemaRegistry, handles, schema
from microbus.reporter import FailureMode, ParallelReporter
from microbus.runtime import Worker
from microbus.transport import AWSSettings, SNSTransport, SQSTransport

__all__ = [
    # codec
    "PubSubMessageSchema",
    "PubSubMessageCodec",
    "schema",
    "SchemaRegistry",
    # transport
    "AWSSettings",
    "SNSTransport",
    "SQSTransport",
    # producer and consumer
    "SNSProducer",
    "TopicArns",
    "SQSConsumer",
    "SQSMessage",
    "QueueInfo",
    "BatchAcker",
    # dispatch
    "handles",
    "HandlerRegistry",
    "SQSMessageDispatcher",
    "RetryPolicy",
    "compute_backoff",
    "Outcome",
    "Action",
    "Result",
    "Middleware",
    # runtime
    "Worker",
    "ConsumerDaemon",
    # patterns: parallel execution and fan-out/fan-in
    "Parallel",
    "callback",
    "register_target",
    "current_cid",
    "ParallelReporter",
    "FailureMode",
    "CallbackRunner",
    "CallbackDaemon",
    "FanInStore",
    # errors and handler signals
    "MicrobusError",
    "ConfigurationError",
    "TopicNotDefinedError",
    "CodecError",
    "DecodeError",
    "MessageValidationError",
    "MessageTooLargeError",
    "TransportError",
    "EndpointUnreachableError",
    "TransientTransportError",
    "QueueNotFoundError",
    "TopicNotFoundError",
    "PublishError",
    "PatternError",
    "ResponseTooLargeError",
    "ResponseNotSerializableError",
    "FanInStateError",
    "Nack",
    "SkipMessage",
    "IgnoreMessage",
]
