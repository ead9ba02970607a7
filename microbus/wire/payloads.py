"""Large payloads: a body over the publish limit is stored in S3 and the message carries a pointer to it.

The format is that of AWS's extended client libraries (``amazon-sqs-java-extended-client-lib``,
``amazon-sns-java-extended-client-lib`` and the Python ``amazon-sqs-extended-client``, all built on
``payload-offloading-java-common-lib-for-aws``), so that each side can read what the other wrote:

- the body (the SNS ``Message``, or the SQS body with raw delivery) is the JSON array
  ``["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "…", "s3Key": "…"}]``
  (the legacy SQS client wrote the class name ``com.amazon.sqs.javamessaging.MessageS3Pointer``);
- the message attribute ``ExtendedPayloadSize`` (Number) holds the size in bytes of the stored body
  (legacy clients: ``SQSLargePayloadSize``). Readers recognise an offloaded message by this attribute.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from microbus.errors import PayloadError, PayloadMissingError, PayloadUnavailableError, TransportError
from microbus.wire.sanitize import log_repr
from microbus.wire.transport import translate_errors

logger = logging.getLogger(__name__)

POINTER_CLASS = "software.amazon.payloadoffloading.PayloadS3Pointer"
LEGACY_POINTER_CLASS = "com.amazon.sqs.javamessaging.MessageS3Pointer"
SIZE_ATTRIBUTE = "ExtendedPayloadSize"
LEGACY_SIZE_ATTRIBUTE = "SQSLargePayloadSize"
_SIZE_ATTRIBUTES = (SIZE_ATTRIBUTE, LEGACY_SIZE_ATTRIBUTE)
_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "AccessDenied", "403"}
"""Codes meaning the object cannot ever be read as it is (S3 answers 403 for a missing key without ListBucket)."""


@dataclass(frozen=True)
class PayloadPointer:
    """Where an offloaded body is: an S3 bucket and key."""

    bucket: str
    key: str

    def to_body(self) -> str:
        """The pointer as the extended clients write it (compact JSON, as Jackson writes it)."""
        return json.dumps([POINTER_CLASS, {"s3BucketName": self.bucket, "s3Key": self.key}], separators=(",", ":"))

    @classmethod
    def from_body(cls, body: str) -> PayloadPointer:
        """Read a pointer written by microbus or an extended client (current or legacy class name).

        Raises:
            PayloadError: the body is not such a pointer.
        """
        try:
            value = json.loads(body)
        except (TypeError, ValueError, RecursionError):
            value = None
        if (
            isinstance(value, list)
            and len(value) == 2
            and value[0] in (POINTER_CLASS, LEGACY_POINTER_CLASS)
            and isinstance(value[1], dict)
            and isinstance(value[1].get("s3BucketName"), str)
            and isinstance(value[1].get("s3Key"), str)
            and value[1]["s3BucketName"]
            and value[1]["s3Key"]
        ):
            return cls(bucket=value[1]["s3BucketName"], key=value[1]["s3Key"])
        raise PayloadError(
            f"The message says its payload is in S3, but its body is not an S3 pointer: {log_repr(body)}"
        )


def size_attribute(size: int) -> dict[str, dict[str, str]]:
    """The message attribute that marks an offloaded message (SNS and SQS form)."""
    return {SIZE_ATTRIBUTE: {"DataType": "Number", "StringValue": str(size)}}


def is_offloaded(message_attributes: Any) -> bool:
    """Whether message attributes (SQS form, or the SNS envelope's ``Type``/``Value`` form) mark an offloaded body."""
    if not message_attributes or not isinstance(message_attributes, dict):  # most messages carry no attributes
        return False
    return any(name in message_attributes for name in _SIZE_ATTRIBUTES)


class S3PayloadStore:
    """Stores, fetches and deletes offloaded bodies in one S3 bucket.

    Parameters:
        client: a boto3 S3 client.
        bucket: where bodies are written; pointers naming another bucket are refused (a producer must not make
            a consumer read any bucket its role can read).
        key_prefix: prepended to each new object key (e.g. ``"microbus/"``).
        delete_after_ack: delete an object once the message pointing to it was acked (deleted from its queue).
            Leave it off when several queues receive the same message (an SNS topic with several subscribers):
            the first to ack would delete the payload of the others. A bucket lifecycle rule that expires
            objects after the queues' retention period is the backstop either way.
    """

    def __init__(self, *, client: Any, bucket: str, key_prefix: str = "", delete_after_ack: bool = False) -> None:
        self.client = client
        self.bucket = bucket
        self.key_prefix = key_prefix
        self.delete_after_ack = delete_after_ack

    def put(self, body: str) -> PayloadPointer:
        """Store a body under a new key; return its pointer.

        Raises:
            TransportError: S3 refused or could not be reached (nothing was published).
        """
        pointer = PayloadPointer(self.bucket, f"{self.key_prefix}{uuid.uuid4()}")
        with translate_errors(f"S3 bucket {self.bucket}"):
            self.client.put_object(Bucket=pointer.bucket, Key=pointer.key, Body=body.encode("utf-8", "surrogatepass"))
        return pointer

    def get(self, pointer: PayloadPointer) -> str:
        """The body a pointer points to.

        Raises:
            PayloadError: the pointer names another bucket than this store's.
            PayloadMissingError: the object does not exist (or may not be read).
            PayloadUnavailableError: S3 failed or could not be reached; try again later.
        """
        if pointer.bucket != self.bucket:
            raise PayloadError(
                f"The message's payload is in S3 bucket {log_repr(pointer.bucket)}, not in {self.bucket!r}, the "
                "bucket this consumer reads payloads from (large_payloads.bucket)"
            )
        where = f"s3://{self.bucket}/{log_repr(pointer.key)[1:-1]}"
        try:
            with translate_errors(f"S3 object {where}"):
                try:
                    response = self.client.get_object(Bucket=pointer.bucket, Key=pointer.key)
                except ClientError as exc:
                    code = str(exc.response.get("Error", {}).get("Code", ""))
                    if code in _MISSING:
                        raise PayloadMissingError(
                            f"The payload of this message, {where}, does not exist or may not be read ({code}): "
                            "it was deleted, expired, or never written"
                        ) from exc
                    raise
                data = response["Body"].read()
        except TransportError as exc:
            raise PayloadUnavailableError(f"Could not fetch the payload {where}: {exc}") from exc
        try:
            return str(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise PayloadError(f"The payload {where} is not UTF-8 text") from exc

    def delete(self, pointer: PayloadPointer) -> bool:
        """Delete an object; False (logged) when S3 failed: the object stays until the bucket's lifecycle rule."""
        try:
            with translate_errors(f"S3 bucket {pointer.bucket}"):
                self.client.delete_object(Bucket=pointer.bucket, Key=pointer.key)
        except TransportError as exc:
            logger.warning("Could not delete the payload %s of an acked message: %s", log_repr(pointer.key), exc)
            return False
        return True
