"""microbus: media-typed SNS/SQS publish/subscribe for Python services."""

from setuptools import find_packages, setup

setup(
    name="microbus",
    version="0.1.0",
    description="AWS-native SNS/SQS publish/subscribe: schemas, producers, consumer daemons.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["microbus", "microbus.*", "schemas", "schemas.*", "daemons", "daemons.*"]),
    include_package_data=True,
    package_data={"microbus.ops": ["static/*.html", "static/*.css", "static/*.js"]},
    install_requires=[
        "boto3>=1.28",
        "marshmallow>=3.18,<5",
        "microcosm>=4.0",
        "click>=8.0",
    ],
    extras_require={
        "yaml": [
            "PyYAML>=6",
        ],
        "metrics": [
            "prometheus-client>=0.17",
        ],
        "otel": [
            "opentelemetry-api>=1.20",
            "opentelemetry-sdk>=1.20",
        ],
        "flask": [
            "Flask>=2.3",
        ],
        "fastapi": [
            "fastapi>=0.100",
        ],
        "outbox": [
            "SQLAlchemy>=2.0,<3",
        ],
        "local": [
            "moto[server]>=5.1,<6",
            "PyYAML>=6",
        ],
        "compat": [
            "PyHamcrest>=2",
        ],
        "dashboard-test": [
            "playwright>=1.40",
        ],
        "dev": [
            "PyHamcrest>=2",
            "moto[server]>=5.1,<6",
            "pytest>=8",
            "pytest-timeout>=2.3",
            "ruff>=0.6",
            "mypy>=1.10",
            "boto3-stubs[sns,sqs,dynamodb,s3]",
            "PyYAML>=6",
            "types-PyYAML",
            "prometheus-client>=0.17",
            "opentelemetry-api>=1.20",
            "opentelemetry-sdk>=1.20",
            "Flask>=2.3",
            "fastapi>=0.100",
            "httpx>=0.24",
            "httpx2",
            "SQLAlchemy>=2.0,<3",
            "psycopg[binary]>=3.1",
            "playwright>=1.40",
        ],
    },
    entry_points={
        "console_scripts": [
            "microbus = microbus.cli:main",
            "microbus-orders-daemon = daemons.orders:main",
            "microbus-fulfilment-daemon = daemons.fulfilment:main",
            "microbus-fulfilment-callbacks-daemon = daemons.fulfilment:callbacks_main",
        ],
        "microcosm.factories": [
            "pubsub_message_schema_registry = microbus.wire.schemas:configure_schema_registry",
            "sqs_message_handler_registry = microbus.consume.handlers:configure_handler_registry",
            "sns_topic_arns = microbus.produce.producer:configure_sns_topic_arns",
            "sns_producer = microbus.produce.producer:configure_sns_producer",
            "sqs_consumer = microbus.consume.consumer:configure_sqs_consumer",
            "sqs_message_dispatcher = microbus.consume.dispatch:configure_sqs_message_dispatcher",
            "sns_client = microbus.wire.transport:configure_sns_client",
            "sqs_client = microbus.wire.transport:configure_sqs_client",
            "aws = microbus.wire.transport:configure_aws",
            "dynamodb_client = microbus.wire.transport:configure_dynamodb_client",
            "s3_client = microbus.wire.transport:configure_s3_client",
            "payload_store = microbus.produce.producer:configure_payload_store",
            "requester = microbus.patterns.request_reply:configure_requester",
            "replier = microbus.patterns.request_reply:configure_replier",
            "parallel = microbus.patterns.parallel:configure_parallel",
            "parallel_reporter = microbus.patterns.reporter:configure_parallel_reporter",
            "fan_in_store = microbus.patterns.fanin:configure_fan_in_store",
            "parallel_callback_runner = microbus.patterns.fanin:configure_parallel_callback_runner",
            "parallel_callback_dispatcher = microbus.patterns.fanin:configure_parallel_callback_dispatcher",
            "idempotency_guard = microbus.patterns.idempotency:configure_idempotency_guard",
            "queue_declarations = microbus.topology.check:configure_queue_declarations",
        ],
    },
)
