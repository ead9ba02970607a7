"""``microbus outbox``: relay the transactional outbox to SNS."""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from types import FrameType

import click

from microbus.cli.common import CONTEXT_SETTINGS
from microbus.errors import MicrobusError

logger = logging.getLogger(__name__)


@click.group(context_settings=CONTEXT_SETTINGS)
def outbox() -> None:
    """The transactional outbox (needs the outbox extra)."""


@outbox.command(context_settings={"show_default": True})
@click.option("--database-url", envvar="MICROBUS_OUTBOX_DATABASE_URL", required=True, help="SQLAlchemy URL.")
@click.option("--table", "table_name", default="microbus_outbox")
@click.option("--create-table", is_flag=True, help="Create the table first, unless it exists.")
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", help="AWS endpoint (emulators); default: AWS.")
@click.option("--region", envvar="AWS_DEFAULT_REGION", default="us-east-1")
@click.option("--payload-bucket", help="S3 bucket of large payloads (rows over the topic's limit); default: none.")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=10, help="Rows per transaction.")
@click.option("--poll-interval", "poll_interval_s", type=click.FloatRange(0.01, 3600), default=1.0)
@click.option(
    "--schemas",
    "schema_modules",
    multiple=True,
    help="Module that registers schemas (repeatable): rows of other media types are held as unknown.",
)
@click.option(
    "--claim-lease",
    "claim_lease_s",
    type=click.FloatRange(1, 86_400),
    default=120.0,
    help="SQLite: seconds a batch stays claimed by a relay that may have died while publishing it.",
)
@click.option(
    "--keep-sent",
    "keep_sent_s",
    type=click.FloatRange(0, None),
    default=7 * 86_400.0,
    help="Seconds sent rows are kept before they are deleted; 0: keep them.",
)
@click.option("--once", is_flag=True, help="Relay what is pending, then exit.")
@click.option("--verbose", is_flag=True)
def relay(
    database_url: str,
    table_name: str,
    create_table: bool,
    endpoint_url: str | None,
    region: str,
    payload_bucket: str | None,
    batch_size: int,
    poll_interval_s: float,
    schema_modules: tuple[str, ...],
    claim_lease_s: float,
    keep_sent_s: float,
    once: bool,
    verbose: bool,
) -> None:
    """Publish pending outbox rows in creation order and mark them sent, until SIGTERM or Ctrl-C."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        from sqlalchemy import create_engine
        from sqlalchemy.exc import ArgumentError, SQLAlchemyError

        from microbus.outbox import Outbox, OutboxRelay
    except ImportError as exc:
        raise click.UsageError(f"the outbox needs SQLAlchemy 2: pip install 'microbus[outbox]' ({exc})") from exc
    from microbus.produce.producer import SNSProducer, TopicArns
    from microbus.wire.payloads import S3PayloadStore
    from microbus.wire.schemas import SchemaRegistry
    from microbus.wire.transport import AWSSettings, SNSTransport

    for module in schema_modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise click.BadParameter(f"cannot import {module!r} ({exc})", param_hint="--schemas") from exc
    try:
        engine = create_engine(database_url)
    except (ArgumentError, ImportError, ValueError) as exc:
        raise click.BadParameter(f"not a usable database URL ({type(exc).__name__}: {exc})") from None
    settings = AWSSettings(endpoint_url=endpoint_url, region_name=region)
    try:
        sns = settings.client("sns")
        store = S3PayloadStore(client=settings.client("s3"), bucket=payload_bucket) if payload_bucket else None
    except MicrobusError as exc:
        raise click.UsageError(str(exc)) from exc
    producer = SNSProducer(
        transport=SNSTransport(client=sns),
        schema_registry=SchemaRegistry(),
        topic_arns=TopicArns(),
        payload_store=store,
    )
    table = Outbox(table_name=table_name)
    relay_ = OutboxRelay(
        engine=engine,
        producer=producer,
        outbox=table,
        batch_size=batch_size,
        poll_interval_s=poll_interval_s,
        check_media_types=bool(schema_modules),
        claim_lease_s=claim_lease_s,
        keep_sent_s=keep_sent_s or None,
    )
    try:
        where = engine.url.render_as_string(hide_password=True)
        try:
            if create_table:
                table.create_table(engine)
            if once:
                click.echo(f"outbox {table_name} at {where}: published {relay_.run_until_idle()}")
                return
        except SQLAlchemyError as exc:
            click.echo(
                f"microbus: outbox {table_name} at {where}: {type(exc).__name__}: {str(exc).splitlines()[0]}", err=True
            )
            sys.exit(2)

        def stop(signum: int, frame: FrameType | None) -> None:
            relay_.stop(timeout_s=0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        click.echo(f"relaying outbox {table_name} at {where}", err=True)
        relay_.run()
    finally:
        engine.dispose()  # its pooled connections closed, also after a usage error
