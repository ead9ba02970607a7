"""Errors raised by microbus, and the control-flow signals that handlers raise.

One root, :class:`MicrobusError`, with a branch per layer: codec (decode/encode),
transport (the wire), configuration. Handlers raise :class:`Nack`,
:class:`SkipMessage` or :class:`IgnoreMessage` (names kept from microcosm-pubsub).
"""

from __future__ import annotations

from typing import Any


class MicrobusError(Exception):
    """Root of every error microbus raises."""


class ConfigurationError(MicrobusError):
    """Something in the configuration must be fixed."""


class TopologyError(ConfigurationError):
    """A topology declaration or file is invalid, or live resources cannot be made to match it."""


class TopicNotDefinedError(ConfigurationError):
    """No SNS topic is configured for a media type."""


class CodecError(MicrobusError):
    """A message could not be encoded or decoded."""


class MessageValidationError(CodecError, ValueError):
    """Content does not match the schema of its media type (raised before anything is sent)."""


class MessageTooLargeError(CodecError, ValueError):
    """An encoded message exceeds the SNS/SQS size limit (raised before anything is sent)."""


class DecodeError(CodecError):
    """A received message can never be handled: it goes to the dead-letter queue at once.

    ``reason`` is a short machine-readable word carried with the dead letter.
    """

    reason = "undecodable"
    retryable = False
    """True when the message may decode later (e.g. its offloaded payload could not be fetched now): it is
    retried with backoff like a failed handler instead of being dead-lettered at once."""


class MalformedBodyError(DecodeError):
    """The SQS body (or the SNS ``Message`` inside it) is not a JSON object."""

    reason = "malformed-body"


class MissingMediaTypeError(DecodeError):
    """The message has no ``mediaType``."""

    reason = "missing-media-type"


class UnknownMediaTypeError(DecodeError):
    """No schema is registered for the message's media type."""

    reason = "unknown-media-type"


class SchemaViolationError(DecodeError):
    """The message does not validate against the schema of its media type."""

    reason = "schema-violation"


class NoHandlerError(DecodeError):
    """The message decoded, but this daemon has no handler for its media type."""

    reason = "no-handler"


class PayloadError(DecodeError):
    """An offloaded payload (an S3 pointer in the body) cannot be read: the pointer is malformed, names a bucket
    this consumer does not read from, or large payloads are not configured."""

    reason = "payload-pointer-invalid"


class PayloadMissingError(PayloadError):
    """The S3 object an offloaded message points to does not exist (deleted, expired, or never written)."""

    reason = "payload-missing"


class PayloadUnavailableError(PayloadError):
    """The S3 object of an offloaded message could not be fetched now (S3 unreachable, throttling, 5xx)."""

    reason = "payload-unavailable"
    retryable = True


class DueTimeError(DecodeError):
    """The message's due time (``x-microbus-deliver-at``) is not an ISO 8601 time with an offset."""

    reason = "malformed-deliver-at"


class TransportError(MicrobusError):
    """A call to SNS or SQS failed."""


class EndpointUnreachableError(TransportError):
    """The SNS/SQS endpoint could not be reached (connection refused, reset, DNS, timeout)."""


class UnexpectedResponseError(TransportError, ConfigurationError):
    """Something other than AWS (or an emulator) answered at the endpoint: an HTML page, an unparsable body."""


class TransientTransportError(TransportError):
    """Throttling or a server-side (5xx) error: the call may succeed when retried."""


class QueueNotFoundError(TransportError, ConfigurationError):
    """The SQS queue does not exist."""


class TopicNotFoundError(TransportError, ConfigurationError):
    """The SNS topic does not exist."""


class FatalError(MicrobusError):
    """The daemon cannot go on (e.g. its IAM policy refuses a call every message needs). Raised while handling a
    message, it stops the worker: the message goes back to the queue unstarted and the daemon exits 2 with
    this sentence."""


class AccessDeniedError(TransportError, ConfigurationError, FatalError):
    """The credentials' IAM policy does not allow a call microbus needs (AccessDenied): fix the policy, not a retry."""


ACCESS_DENIED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError", "NotAuthorized"}
)
"""ClientError codes AWS services answer when IAM refuses a call."""


class PublishError(TransportError):
    """Some messages of a batch were not published; ``failed`` maps entry index to the reason."""

    def __init__(self, message: str, *, message_ids: list[str | None], failed: dict[int, str]) -> None:
        super().__init__(message)
        self.message_ids = message_ids
        self.failed = failed


class PatternError(MicrobusError):
    """Parallel execution or fan-in failed."""


class ResponseTooLargeError(PatternError, MessageTooLargeError):
    """A target's response does not fit in a callback message; return a reference (e.g. an S3 key)."""


class RequestTimeoutError(PatternError, TimeoutError):
    """No reply to a request arrived within its timeout (the request may still be handled, and its reply dropped)."""


class RemoteHandlerError(PatternError):
    """The handler of a request raised; ``error_class`` and the message say what it raised."""

    def __init__(self, message: str, *, error_class: str) -> None:
        super().__init__(message)
        self.error_class = error_class


class ResponseNotSerializableError(PatternError):
    """A target's response is not JSON, so it cannot travel in a callback message."""


class FanInStateError(PatternError):
    """The fan-in state of a correlation id is missing, expired, or too big for its table."""


class LambdaEventError(PatternError):
    """A Lambda invocation's event is not an SQS event whose records can be told apart: the batch is retried."""


class LambdaBatchFailedError(PatternError):
    """Some messages of a Lambda batch failed and partial batch responses are off: the batch is retried."""


class Nack(Exception):
    """Raised by a handler: retry the message after ``visibility_timeout_seconds`` (None: the backoff)."""

    def __init__(
        self,
        visibility_timeout_seconds: int | None = None,
        reason: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.visibility_timeout_seconds = visibility_timeout_seconds
        self.extra = extra or {}


class SkipMessage(Exception):
    """Raised by a handler: a precondition failed; ack the message and do not retry it."""

    def __init__(self, reason: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.extra = extra or {}


class IgnoreMessage(Exception):
    """Raised by a handler: this message is not for us; ack it without counting it as handled."""

    def __init__(self, reason: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.extra = extra or {}
