"""A user's module type-checks against the installed wheel (mypy --strict, in a fresh venv)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv

import pytest

from tests.packaging.conftest import ROOT, run

pytestmark = pytest.mark.timeout(900)  # a fresh venv with boto3 and mypy: minutes on a loaded machine

USER_MODULE = textwrap.dedent(
    """
    from typing import Any

    from marshmallow import fields
    from microbus import ConsumerDaemon, Outcome, PubSubMessageSchema, SNSProducer, SQSConsumer, handles, schema
    from microbus.testing import wait_for


    @schema
    class InvoiceSent(PubSubMessageSchema):
        MEDIA_TYPE = "application/vnd.example.invoice.sent"
        invoice_id = fields.String(required=True)


    @handles(InvoiceSent)
    def on_invoice_sent(content: dict[str, Any]) -> None:
        print(content["invoice_id"])


    class InvoicesDaemon(ConsumerDaemon):
        name = "invoices"
        media_types = (InvoiceSent,)


    def send(producer: SNSProducer) -> str:
        return producer.produce(InvoiceSent.MEDIA_TYPE, invoice_id="i-1")


    def receive(consumer: SQSConsumer) -> int:
        return len(wait_for(consumer.consume, timeout_s=5.0))


    FINAL: Outcome = Outcome.SUCCEEDED
    """
)
WRONG = "\n\ndef wrong(producer: SNSProducer) -> int:\n    return producer.produce(InvoiceSent.MEDIA_TYPE)\n"


def test_a_user_module_type_checks_strictly_against_the_installed_wheel(wheel, tmp_path):
    # Given a fresh venv with the wheel (and its dependencies, pinned as CI pins them) and mypy
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # filled by this interpreter's pip (--python): no bootstrap
    python = env_dir / "bin" / "python"
    mypy = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("mypy==")]
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-compile"]
    run([*pip, "-c", str(ROOT / "constraints.txt"), str(wheel), *(mypy or ["mypy"])])
    # And a user's module that uses the public API
    user = tmp_path / "user" / "invoices.py"
    user.parent.mkdir()
    user.write_text(USER_MODULE)
    check = [str(python), "-m", "mypy", "--strict", "--no-incremental", str(user)]
    # When mypy checks it, then it passes: microbus is typed (py.typed), no import-untyped, no Any leaks
    result = subprocess.run(check, capture_output=True, text=True, timeout=600, cwd=user.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "import-untyped" not in result.stdout
    # And a type error against microbus's API is caught (the API's types are real, not Any)
    user.write_text(USER_MODULE + WRONG)
    result = subprocess.run(check, capture_output=True, text=True, timeout=600, cwd=user.parent)
    assert result.returncode == 1, result.stdout
    assert 'Incompatible return value type (got "str", expected "int")' in result.stdout, result.stdout
