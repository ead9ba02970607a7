"""microbus: media-typed SNS/SQS publish/subscribe for Python services."""

__version__ = "0.1.0"

from microbus.aliases import FAMILIAR_NAMES, use_familiar_names
from microbus.consume.breaker import CircuitBreaker, CircuitBreakerSettings, CircuitState
from microbus.consume.consumer import QueueInfo, SQSConsumer
from microbus.consume.daemon import ConsumerDaemon, register_operations
from microbus.consume.dispatch import (
    Action,
    Middleware,
    Outcome,
    Result,
    RetryPolicy,
    SQSMessageDispatcher,
    compute_backoff,
)
from microbus.consume.handlers import HandlerRegistry, handles
from microbus.consume.heartbeat import VisibilityHeartbeat
from microbus.consume.lifecycle import EventKind, LifecycleEvent, LifecycleObserver, MessageState
from microbus.consume.message import SQSMessage
from microbus.consume.settle import BatchAcker
from microbus.consume.worker import Worker
from microbus.errors import (
    AccessDeniedError,
    CodecError,
    ConfigurationError,
    DecodeError,
    EndpointUnreachableError,
    FanInStateError,
    IgnoreMessage,
    LambdaBatchFailedError,
    LambdaEventError,
    MessageTooLargeError,
    MessageValidationError,
    MicrobusError,
    Nack,
    PatternError,
    PayloadError,
    PayloadMissingError,
    PayloadUnavailableError,
    PublishError,
    QueueNotFoundError,
    RemoteHandlerError,
    RequestTimeoutError,
    ResponseNotSerializableError,
    ResponseTooLargeError,
    SkipMessage,
    TopicNotDefinedError,
    TopicNotFoundError,
    TransientTransportError,
    TransportError,
    UnexpectedResponseError,
)
from microbus.ops.daemon import DaemonOperations
from microbus.patterns.aws_lambda import LambdaHandler, make_lambda_handler
from microbus.patterns.fanin import CallbackDaemon, CallbackRunner, FanInStore
from microbus.patterns.idempotency import (
    DynamoDBIdempotencyStore,
    IdempotencyGuard,
    IdempotencyStore,
    MemoryIdempotencyStore,
)
from microbus.patterns.parallel import FanOutPublishError, Parallel, callback, register_target
from microbus.patterns.reporter import FailureMode, ParallelReporter
from microbus.patterns.request_reply import Replier, Requester
from microbus.produce.producer import SNSProducer, TopicArns
from microbus.web import DeferredPublishMiddleware, deferred_publish
from microbus.wire.codecs import PubSubMessageCodec, PubSubMessageSchema
from microbus.wire.context import current_cid
from microbus.wire.payloads import PayloadPointer, S3PayloadStore
from microbus.wire.schemas import SchemaRegistry, schema
from microbus.wire.transport import AWSSettings, SNSTransport, SQSTransport

register_operations(DaemonOperations)  # the composition root: the core never imports the operations layer

__all__ = [
    "__version__",
    # component names (microbus_sns_producer, …) and the opt-in familiar aliases
    "FAMILIAR_NAMES",
    "use_familiar_names",
    # codec
    "PubSubMessageSchema",
    "PubSubMessageCodec",
    "schema",
    "SchemaRegistry",
    # transport
    "AWSSettings",
    "SNSTransport",
    "SQSTransport",
    "S3PayloadStore",
    "PayloadPointer",
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
    "IdempotencyGuard",
    "IdempotencyStore",
    "DynamoDBIdempotencyStore",
    "MemoryIdempotencyStore",
    # runtime
    "Worker",
    "LifecycleEvent",
    "LifecycleObserver",
    "EventKind",
    "MessageState",
    "VisibilityHeartbeat",
    "ConsumerDaemon",
    "CircuitBreaker",
    "CircuitBreakerSettings",
    "CircuitState",
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
    # patterns: AWS Lambda
    "make_lambda_handler",
    "LambdaHandler",
    # patterns: request/reply
    "Requester",
    "Replier",
    # web apps (the outbox is microbus.outbox, with the outbox extra)
    "deferred_publish",
    "DeferredPublishMiddleware",
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
    "FanOutPublishError",
    "AccessDeniedError",
    "UnexpectedResponseError",
    "PatternError",
    "ResponseTooLargeError",
    "ResponseNotSerializableError",
    "FanInStateError",
    "LambdaEventError",
    "LambdaBatchFailedError",
    "PayloadError",
    "PayloadMissingError",
    "PayloadUnavailableError",
    "RequestTimeoutError",
    "RemoteHandlerError",
    "Nack",
    "SkipMessage",
    "IgnoreMessage",
]
