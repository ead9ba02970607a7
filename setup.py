"""microbus: media-typed SNS/SQS publish/subscribe for Python services."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# The one source of truth for the version is microbus.__version__ (read here without importing microbus).
VERSION = re.search(r'^__version__ = "([^"]+)"$', (HERE / "microbus" / "__init__.py").read_text(), re.M).group(1)
REPOSITORY = "https://github.com/microbus/microbus"

# The reference application lives in the repository's top-level daemons/ and schemas/ folders and ships
# namespaced, as microbus.reference.daemons and microbus.reference.schemas.
REFERENCE = {"microbus.reference.daemons": "daemons", "microbus.reference.schemas": "schemas"}
TESTING = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "moto[server]>=5.1,<6",
    "PyYAML>=6",
]

setup(
    name="microbus",
    version=VERSION,
    description="AWS-native SNS/SQS publish/subscribe: schemas, producers, consumer daemons.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    url=REPOSITORY,
    project_urls={
        "Source": REPOSITORY,
        "Changelog": f"{REPOSITORY}/blob/main/CHANGELOG.md",
        "Issues": f"{REPOSITORY}/issues",
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: MIT License",
        "Operating System :: POSIX",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Framework :: Pytest",
        "Topic :: System :: Distributed Computing",
        "Typing :: Typed",
    ],
    python_requires=">=3.11",
    packages=find_packages(include=["microbus", "microbus.*"]) + sorted(REFERENCE),
    package_dir=REFERENCE,
    package_data={
        "microbus": ["py.typed"],
        # the operations layer's static assets (dashboard pages, styles, scripts), wherever under microbus/ops/
        "microbus.ops": ["**/*.html", "**/*.css", "**/*.js", "**/*.json", "**/*.svg", "**/*.png", "**/*.ico"],
    },
    include_package_data=True,
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
        "testing": TESTING,
        "dev": [
            *TESTING,
            "PyHamcrest>=2",
            "pytest-xdist>=3.5",
            "build>=1.0",
            "ruff>=0.6",
            "mypy>=1.10",
            "boto3-stubs[sns,sqs,dynamodb,s3]",
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
            "microbus-orders-daemon = microbus.reference.daemons.orders:main",
            "microbus-fulfilment-daemon = microbus.reference.daemons.fulfilment:main",
            "microbus-fulfilment-callbacks-daemon = microbus.reference.daemons.fulfilment:callbacks_main",
        ],
        # Named after the module, so a conftest that still lists it in pytest_plugins is not a second registration.
        "pytest11": [
            "microbus.testing.fixtures = microbus.testing.fixtures",
        ],
        "microcosm.factories": [
            "microbus_pubsub_message_schema_registry = microbus.wire.schemas:configure_schema_registry",
            "microbus_sqs_message_handler_registry = microbus.consume.handlers:configure_handler_registry",
            "microbus_sns_topic_arns = microbus.produce.producer:configure_sns_topic_arns",
            "microbus_sns_producer = microbus.produce.producer:configure_sns_producer",
            "microbus_sqs_consumer = microbus.consume.consumer:configure_sqs_consumer",
            "microbus_sqs_message_dispatcher = microbus.consume.dispatch:configure_sqs_message_dispatcher",
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
