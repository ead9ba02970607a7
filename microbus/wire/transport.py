"""The wire: the only module that talks to boto3.

Every botocore error is turned into a :class:`~microbus.errors.TransportError` right here, with a
message that says what to fix.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ProfileNotFound,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.parsers import ResponseParserError
from microcosm.api import defaults

from microbus.errors import (
    ConfigurationError,
    EndpointUnreachableError,
    QueueNotFoundError,
    TopicNotFoundError,
    TransientTransportError,
    TransportError,
    UnexpectedResponseError,
)
from microbus.wire.sanitize import log_repr, log_text, one_line

if TYPE_CHECKING:
    from microcosm.object_graph import ObjectGraph

MAX_BATCH = 10
MAX_BATCH_BYTES = 262_144
"""Largest total payload of one SendMessageBatch this module sends (SQS's classic limit)."""
_QUEUE_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_TOPIC_MISSING = {"NotFound", "NotFoundException"}
_THROTTLED = {"Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequestsException"}


@dataclass(frozen=True)
class AWSSettings:
    """How to reach AWS: endpoint (None for real AWS), region, optional profile and credentials."""

    endpoint_url: str | None = None
    region_name: str = "us-east-1"
    profile_name: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    max_attempts: int = 3
    max_pool_connections: int = 10

    @classmethod
    def from_config(cls, config: Any) -> AWSSettings:
        """Build from the graph's ``aws`` config section."""
        return cls(
            endpoint_url=config.endpoint_url or None,
            region_name=config.region_name,
            profile_name=config.profile_name or None,
            access_key_id=config.access_key_id or None,
            secret_access_key=config.secret_access_key or None,
            connect_timeout_s=float(config.connect_timeout_s),
            read_timeout_s=float(config.read_timeout_s),
            max_attempts=int(config.max_attempts),
            max_pool_connections=int(config.max_pool_connections),
        )

    def client(self, service: str) -> Any:
        """Create a boto3 client for ``service`` with these settings.

        With a loopback endpoint (an emulator on this machine: 127.0.0.0/8, ``localhost``, ``::1``) and no
        credentials configured (explicitly, in the environment, or in a profile), the client gets dummy
        credentials, and the credential chain never asks the instance-metadata or container service.

        Raises:
            ConfigurationError: the region is empty or not an AWS region, the profile does not exist, the
                credentials are incomplete, or the endpoint URL is not a URL.
        """
        region = _checked_region(self.region_name)
        _check_endpoint(self.endpoint_url, service)
        config = Config(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            max_pool_connections=self.max_pool_connections,
        )
        try:
            core = botocore.session.Session(profile=self.profile_name)
            keys: dict[str, str] = {}
            if self.access_key_id is not None or self.secret_access_key is not None:
                keys = {
                    "aws_access_key_id": self.access_key_id or "",
                    "aws_secret_access_key": self.secret_access_key or "",
                }
                if not (self.access_key_id and self.secret_access_key):
                    raise ConfigurationError(
                        "Incomplete AWS credentials: set both aws.access_key_id and aws.secret_access_key, or neither"
                    )
            elif is_loopback_endpoint(self.endpoint_url):
                resolver = core.get_component("credential_provider")
                for provider in ("iam-role", "container-role"):  # an emulator on this machine needs no role
                    resolver.remove(provider)
                if core.get_credentials() is None:
                    keys = {"aws_access_key_id": EMULATOR_KEY_ID, "aws_secret_access_key": EMULATOR_SECRET}
            session = boto3.session.Session(botocore_session=core, region_name=region, **keys)
            client = session.client(service, endpoint_url=self.endpoint_url, config=config)  # type: ignore[call-overload]
            if not keys and core.get_credentials() is None:
                client.meta.events.register("before-call", functools.partial(_no_credentials, self.endpoint_url))
        except ProfileNotFound as exc:
            raise _profile_error(self.profile_name, exc) from exc
        except ValueError as exc:
            raise ConfigurationError(
                f"Cannot create the {service} client ({one_line(str(exc))}): the endpoint URL must look like "
                "http://127.0.0.1:4566"
            ) from exc
        except BotoCoreError as exc:
            raise ConfigurationError(f"Cannot create the {service} client: {one_line(str(exc))}") from exc
        client.meta.events.register("before-parse", _refuse_non_aws_response)
        return client


EMULATOR_KEY_ID = "testing"
"""Dummy credentials for an emulator on loopback (moto and LocalStack accept any); not credentials."""
EMULATOR_SECRET = "testing"  # noqa: S105
_REGION_ADVICE = "fix aws.region_name (--region, AWS_DEFAULT_REGION), e.g. us-east-1"


def is_loopback_endpoint(endpoint_url: str | None) -> bool:
    """True when the endpoint is on this machine: 127.0.0.0/8, ``::1`` or ``localhost``."""
    if not endpoint_url:
        return False
    try:
        host = urlsplit(endpoint_url).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@functools.cache
def _region_patterns() -> tuple[frozenset[str], tuple[re.Pattern[str], ...]]:
    """The regions botocore knows, and each partition's pattern (regions newer than botocore match those)."""
    partitions = botocore.loaders.create_loader().load_data("partitions").get("partitions", [])
    known = frozenset(region for partition in partitions for region in partition.get("regions", {}))
    return known, tuple(re.compile(p["regionRegex"]) for p in partitions if p.get("regionRegex"))


def _check_endpoint(endpoint_url: str | None, service: str) -> None:
    """An endpoint URL needs a scheme and a host; checked before any credential lookup."""
    if endpoint_url is None:
        return
    try:
        parts = urlsplit(endpoint_url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise ConfigurationError(
            f"Cannot create the {service} client: the endpoint URL {log_repr(endpoint_url, 100)} is not a URL: "
            "the endpoint URL must look like http://127.0.0.1:4566 (aws.endpoint_url / AWS_ENDPOINT_URL)"
        )


def _checked_region(region_name: str | None) -> str:
    region = (region_name or "").strip()
    if not region:
        raise ConfigurationError(f"No AWS region configured (aws.region_name is empty): {_REGION_ADVICE}")
    known, patterns = _region_patterns()
    if region not in known and not any(pattern.match(region) for pattern in patterns):
        raise ConfigurationError(f"{log_repr(region_name, 64)} is not an AWS region: {_REGION_ADVICE}")
    return region


def _profile_error(configured: str | None, exc: ProfileNotFound) -> ConfigurationError:
    """The missing profile named, and where its name came from (the setting, else the environment)."""
    name = exc.kwargs.get("profile") or configured
    if configured:
        where, fix = "", "fix aws.profile_name"
    else:
        variable = "AWS_PROFILE" if os.environ.get("AWS_PROFILE") else "AWS_DEFAULT_PROFILE"
        name = name or os.environ.get(variable)
        where, fix = f" (from {variable})", f"fix or unset {variable}"
    return ConfigurationError(
        f"AWS profile {log_repr(name, 64)}{where} does not exist in the AWS config or credentials file: {fix}"
    )


class _NoCredentials(NoCredentialsError):
    """No credentials, raised before the call is made, with advice that fits the endpoint."""

    fmt = "Unable to locate credentials: {advice}"


def _no_credentials(endpoint_url: str | None, **kwargs: Any) -> None:
    if endpoint_url is None:
        advice = (
            "configure the default credential chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in "
            "aws.profile_name or AWS_PROFILE, or an instance role), or set aws.endpoint_url to an emulator "
            "to run without AWS"
        )
    else:
        advice = (
            f"the endpoint {log_text(endpoint_url, 100)} is not on this machine, so no dummy credentials are used: "
            "set aws.access_key_id and aws.secret_access_key (any values an emulator accepts), "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile (aws.profile_name, AWS_PROFILE)"
        )
    raise _NoCredentials(advice=advice)


class _NotAnAWSResponse(BotoCoreError):
    """The endpoint answered with something that is not an AWS response (an HTML page)."""

    fmt = "HTTP {status} with {content_type}"


def _refuse_non_aws_response(operation_model: Any, response_dict: dict[str, Any], **kwargs: Any) -> None:
    """botocore ``before-parse`` hook: an HTML answer is some other web server, not SNS/SQS/DynamoDB/S3.

    An empty body is no HTML page: moto answers S3's CreateBucket, PutObject and DeleteObject that way.
    """
    if getattr(operation_model, "has_streaming_output", False):
        return  # an S3 object may well be an HTML page
    status = int(response_dict.get("status_code") or 0)
    headers = response_dict.get("headers") or {}
    content_type = str(headers.get("content-type") or headers.get("Content-Type") or "")
    if status < 500 and content_type.lower().startswith("text/html") and response_dict.get("body"):
        raise _NotAnAWSResponse(status=status, content_type=content_type.split(";", 1)[0])


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Turn botocore errors raised inside the block into microbus transport errors.

    ``what`` names the target ("SQS queue https://…") for the message.
    """
    try:
        yield
    except ClientError as exc:
        raise _from_client_error(exc, what) from exc
    except _NoCredentials as exc:
        raise ConfigurationError(f"No AWS credentials found for {what}: {exc.kwargs['advice']}.") from exc
    except NoCredentialsError as exc:
        raise ConfigurationError(
            f"No AWS credentials found for {what}: configure the default credential chain (AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, a profile in aws.profile_name or AWS_PROFILE, or an instance role)."
        ) from exc
    except ProfileNotFound as exc:
        raise _profile_error(None, exc) from exc
    except _NotAnAWSResponse as exc:
        raise UnexpectedResponseError(
            f"{what} answered {exc}, not an AWS response: check the endpoint URL "
            "(aws.endpoint_url / AWS_ENDPOINT_URL / --endpoint-url) — another web server answers there"
        ) from exc
    except ResponseParserError as exc:
        raise UnexpectedResponseError(
            f"{what} answered with something that is not an AWS response ({one_line(str(exc), 120)}): check the "
            "endpoint URL (aws.endpoint_url / AWS_ENDPOINT_URL / --endpoint-url) and the region"
        ) from exc
    except NoRegionError as exc:
        raise ConfigurationError(f"No AWS region configured for {what}: set aws.region_name.") from exc
    except (BotoConnectionError, HTTPClientError) as exc:
        raise EndpointUnreachableError(
            f"Cannot reach {what}: check the endpoint URL (aws.endpoint_url / AWS_ENDPOINT_URL) and that "
            f"the service is running ({type(exc).__name__})"
        ) from exc
    except BotoCoreError as exc:
        raise TransportError(f"{what}: {one_line(str(exc))}") from exc


def _from_client_error(exc: ClientError, what: str) -> TransportError:
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    text = one_line(str(exc.response.get("Error", {}).get("Message", "")))
    if code in _QUEUE_MISSING:
        return QueueNotFoundError(f"{what} does not exist: create it (microbus topology apply) or fix the URL")
    if code in _TOPIC_MISSING and "topic" in what.lower():
        return TopicNotFoundError(f"{what} does not exist: create it (microbus topology apply) or fix the ARN")
    if code in _THROTTLED or status >= 500:
        return TransientTransportError(f"{what} failed transiently ({code or status}): {text}")
    return TransportError(f"{what} failed ({code}): {text}")


@dataclass(frozen=True)
class EntryFailure:
    """One entry of a batch call that SQS refused.

    ``sender_fault`` True means the entry itself is wrong (e.g. a stale receipt handle) and retrying it
    will not help; False means SQS failed it and it may be retried.
    """

    code: str
    message: str
    sender_fault: bool


@dataclass(frozen=True)
class OutgoingMessage:
    """A message to send in a batch; ``key`` identifies it in the returned failures."""

    key: str
    body: str
    attributes: dict[str, Any] = field(default_factory=dict)
    group_id: str | None = None
    deduplication_id: str | None = None
    delay_seconds: int | None = None
    """SQS's per-message ``DelaySeconds`` (0..900; standard queues only)."""

    def __repr__(self) -> str:
        """Sizes and attribute names only: the key may be a receipt handle, the body and attributes content."""
        return (
            f"OutgoingMessage(body={len(self.body)} chars, attributes={sorted(self.attributes)}, "
            f"group_id={self.group_id is not None}, deduplication_id={self.deduplication_id is not None}, "
            f"delay_seconds={self.delay_seconds})"
        )

    def trimmed(self, keep: tuple[str, ...] = ("microbus.reason", "microbus.source_message_id")) -> OutgoingMessage:
        """The same message with only the ``keep`` attributes (for a copy SQS refused as too large)."""
        attributes = {name: value for name, value in self.attributes.items() if name in keep}
        attributes["microbus.trimmed"] = {"DataType": "String", "StringValue": "attributes dropped: over a limit"}
        return OutgoingMessage(
            self.key, self.body, attributes, self.group_id, self.deduplication_id, self.delay_seconds
        )

    @property
    def size(self) -> int:
        """Bytes this message counts toward a batch's payload (body and attributes)."""
        size = len(self.body.encode("utf-8", "surrogatepass"))
        for name, value in self.attributes.items():
            size += len(name.encode("utf-8", "surrogatepass")) + len(str(value.get("DataType", "")))
            size += len(str(value.get("StringValue", "")).encode("utf-8", "surrogatepass"))
        return size


def _failures(response: dict[str, Any], keys: list[str]) -> dict[str, EntryFailure]:
    """The ``Failed`` entries of a batch response, by the caller's key of each entry."""
    failures: dict[str, EntryFailure] = {}
    for entry in response.get("Failed", []):
        key = keys[int(entry["Id"])]
        failures[key] = EntryFailure(
            code=str(entry.get("Code", "")),
            message=str(entry.get("Message", ""))[:200],
            sender_fault=bool(entry.get("SenderFault", False)),
        )
    return failures


class SQSTransport:
    """Receive, delete, change visibility and send on one SQS queue."""

    def __init__(self, *, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url
        self._what = f"SQS queue {queue_url}"

    def for_queue(self, queue_url: str) -> SQSTransport:
        """A transport for another queue, sharing this client."""
        return SQSTransport(client=self.client, queue_url=queue_url)

    def receive(
        self, *, max_messages: int, wait_time_seconds: int, visibility_timeout_seconds: int | None = None
    ) -> list[dict[str, Any]]:
        """Long-poll for up to ``max_messages`` (≤ 10) raw messages."""
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": max(1, min(MAX_BATCH, max_messages)),
            "WaitTimeSeconds": wait_time_seconds,
            "MessageSystemAttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }
        if visibility_timeout_seconds is not None:
            kwargs["VisibilityTimeout"] = visibility_timeout_seconds
        with translate_errors(self._what):
            response = self.client.receive_message(**kwargs)
        return list(response.get("Messages", []))

    def delete_batch(self, receipt_handles: Sequence[str]) -> list[str]:
        """Delete messages in batches of 10; return the receipt handles that could not be deleted."""
        failed: list[str] = []
        for start in range(0, len(receipt_handles), MAX_BATCH):
            failed.extend(self.delete_entries(receipt_handles[start : start + MAX_BATCH]))
        return failed

    def delete_entries(self, receipt_handles: Sequence[str]) -> dict[str, EntryFailure]:
        """Delete up to 10 messages in one call; return the failed entries by receipt handle."""
        entries = [{"Id": str(i), "ReceiptHandle": handle} for i, handle in enumerate(receipt_handles)]
        with translate_errors(self._what):
            response = self.client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        return _failures(response, list(receipt_handles))

    def change_visibility(self, receipt_handle: str, visibility_timeout_seconds: int) -> None:
        """Make a message visible again after ``visibility_timeout_seconds`` (0: at once)."""
        with translate_errors(self._what):
            self.client.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=receipt_handle,
                VisibilityTimeout=visibility_timeout_seconds,
            )

    def change_visibility_batch(self, changes: Sequence[tuple[str, int]]) -> list[str]:
        """Change the visibility of many messages; return the receipt handles that failed."""
        failed: list[str] = []
        for start in range(0, len(changes), MAX_BATCH):
            failed.extend(self.change_visibility_entries(changes[start : start + MAX_BATCH]))
        return failed

    def change_visibility_entries(self, changes: Sequence[tuple[str, int]]) -> dict[str, EntryFailure]:
        """Change the visibility of up to 10 messages in one call; return the failed entries by receipt handle."""
        entries = [
            {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
            for i, (handle, seconds) in enumerate(changes)
        ]
        with translate_errors(self._what):
            response = self.client.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=entries)
        return _failures(response, [handle for handle, _ in changes])

    def send_entries(self, messages: Sequence[OutgoingMessage]) -> dict[str, EntryFailure]:
        """Send up to 10 messages (at most :data:`MAX_BATCH_BYTES` in all) in one call; return failures by key."""
        entries = []
        for i, message in enumerate(messages):
            entry: dict[str, Any] = {"Id": str(i), "MessageBody": message.body}
            if message.attributes:
                entry["MessageAttributes"] = message.attributes
            if message.group_id is not None:
                entry["MessageGroupId"] = message.group_id
            if message.deduplication_id is not None:
                entry["MessageDeduplicationId"] = message.deduplication_id
            if message.delay_seconds is not None:
                entry["DelaySeconds"] = message.delay_seconds
            entries.append(entry)
        with translate_errors(self._what):
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
        return _failures(response, [message.key for message in messages])

    def send(
        self,
        body: str,
        message_attributes: dict[str, Any] | None = None,
        *,
        message_group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> str:
        """Send one message (a FIFO queue needs ``message_group_id``); return its message id."""
        kwargs: dict[str, Any] = {"QueueUrl": self.queue_url, "MessageBody": body}
        if message_attributes:
            kwargs["MessageAttributes"] = message_attributes
        if message_group_id is not None:
            kwargs["MessageGroupId"] = message_group_id
        if deduplication_id is not None:
            kwargs["MessageDeduplicationId"] = deduplication_id
        with translate_errors(self._what):
            response = self.client.send_message(**kwargs)
        return str(response["MessageId"])

    def get_attributes(self) -> dict[str, str]:
        """Return all the queue's attributes.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        with translate_errors(self._what):
            response = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])
        return dict(response.get("Attributes", {}))

    def queue_url_of_arn(self, queue_arn: str) -> str:
        """Return the URL of another queue, given its ARN (same account and region)."""
        name = queue_arn.rsplit(":", 1)[-1]
        owner = queue_arn.split(":")[4]
        with translate_errors(f"SQS queue {queue_arn}"):
            response = self.client.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=owner)
        return str(response["QueueUrl"])


class SNSTransport:
    """Publish to SNS topics, one message or batches of 10; read a topic's attributes."""

    def __init__(self, *, client: Any) -> None:
        self.client = client

    def publish(
        self,
        topic_arn: str,
        message: str,
        message_attributes: dict[str, Any],
        *,
        message_group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> str:
        """Publish one message (a FIFO topic needs ``message_group_id``); return its message id."""
        fifo = self._fifo_parameters(message_group_id, deduplication_id)
        with translate_errors(f"SNS topic {topic_arn}"):
            response = self.client.publish(
                TopicArn=topic_arn, Message=message, MessageAttributes=message_attributes, **fifo
            )
        return str(response["MessageId"])

    def publish_batch(
        self,
        topic_arn: str,
        entries: Sequence[tuple[str, dict[str, Any]]],
        *,
        message_group_ids: Sequence[str | None] | None = None,
        deduplication_ids: Sequence[str | None] | None = None,
    ) -> tuple[list[str | None], dict[int, str]]:
        """Publish up to 10 messages; return the message ids (None where failed) and failures by index.

        ``message_group_ids`` and ``deduplication_ids`` (FIFO topics) run parallel to ``entries``.
        """
        group_ids = list(message_group_ids or [None] * len(entries))
        dedup_ids = list(deduplication_ids or [None] * len(entries))
        request = [
            {
                "Id": str(i),
                "Message": message,
                "MessageAttributes": attributes,
                **self._fifo_parameters(group_ids[i], dedup_ids[i]),
            }
            for i, (message, attributes) in enumerate(entries)
        ]
        with translate_errors(f"SNS topic {topic_arn}"):
            response = self.client.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=request)
        ids: list[str | None] = [None] * len(entries)
        for entry in response.get("Successful", []):
            ids[int(entry["Id"])] = str(entry["MessageId"])
        failed = {
            int(entry["Id"]): f"{entry.get('Code', '')}: {entry.get('Message', '')}"
            for entry in response.get("Failed", [])
        }
        return ids, failed

    def topic_attributes(self, topic_arn: str) -> dict[str, str]:
        """The attributes of a topic (``FifoTopic``, ``ContentBasedDeduplication`` …)."""
        with translate_errors(f"SNS topic {topic_arn}"):
            response = self.client.get_topic_attributes(TopicArn=topic_arn)
        return {str(key): str(value) for key, value in response.get("Attributes", {}).items()}

    @staticmethod
    def _fifo_parameters(message_group_id: str | None, deduplication_id: str | None) -> dict[str, str]:
        parameters = {}
        if message_group_id is not None:
            parameters["MessageGroupId"] = message_group_id
        if deduplication_id is not None:
            parameters["MessageDeduplicationId"] = deduplication_id
        return parameters


@defaults(
    endpoint_url=None,
    region_name="us-east-1",
    profile_name=None,
    access_key_id=None,
    secret_access_key=None,
    connect_timeout_s=5.0,
    read_timeout_s=30.0,
    max_attempts=3,
    max_pool_connections=10,
)
def configure_aws(graph: ObjectGraph) -> AWSSettings:
    """microcosm factory: ``graph.aws``, the settings every client is built from.

    ``endpoint_url`` None means real AWS (boto3 also honours ``AWS_ENDPOINT_URL``). ``read_timeout_s`` must
    exceed the consumer's long-poll wait; ``max_attempts`` counts botocore's own tries per call;
    ``max_pool_connections`` bounds the connections of one client (a daemon raises it to fit its concurrency).
    """
    return AWSSettings.from_config(graph.config.aws)


def configure_sqs_client(graph: ObjectGraph) -> Any:
    """microcosm factory: ``graph.sqs_client``."""
    return graph.aws.client("sqs")


def configure_sns_client(graph: ObjectGraph) -> Any:
    """microcosm factory: ``graph.sns_client``."""
    return graph.aws.client("sns")


def configure_dynamodb_client(graph: ObjectGraph) -> Any:
    """microcosm factory: ``graph.dynamodb_client``."""
    return graph.aws.client("dynamodb")


def configure_s3_client(graph: ObjectGraph) -> Any:
    """microcosm factory: ``graph.s3_client`` (large payloads)."""
    return graph.aws.client("s3")
