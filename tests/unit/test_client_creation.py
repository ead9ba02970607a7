"""Creating clients: botocore's parsed models are shared across clients (a new session would parse them again),
and nothing else is: credentials, regions and data paths stay each client's own."""

from __future__ import annotations

import pytest

from microbus.wire.transport import AWSSettings

ENDPOINT = "http://127.0.0.1:9"  # never called: these tests only create clients


@pytest.fixture(autouse=True)
def _no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_DATA_PATH", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_clients_share_one_model_loader_whose_search_paths_do_not_grow():
    settings = AWSSettings(endpoint_url=ENDPOINT, region_name="us-east-1")
    first = settings.client("sqs")
    paths = list(first._loader.search_paths)
    others = [settings.client(service) for service in ("sns", "s3", "dynamodb", "sqs") * 3]
    assert all(client._loader is first._loader for client in others)
    assert first._loader.search_paths == paths
    assert len(set(paths)) == len(paths)


def test_credentials_and_regions_stay_each_clients_own():
    one = AWSSettings(endpoint_url=ENDPOINT, region_name="us-east-1", access_key_id="ONE", secret_access_key="a")
    two = AWSSettings(endpoint_url=ENDPOINT, region_name="eu-west-1", access_key_id="TWO", secret_access_key="b")
    first, second = one.client("sqs"), two.client("sqs")
    assert first._request_signer._credentials.access_key == "ONE"
    assert second._request_signer._credentials.access_key == "TWO"
    assert (first.meta.region_name, second.meta.region_name) == ("us-east-1", "eu-west-1")


def test_the_s3_client_keeps_boto3s_transfer_methods():
    client = AWSSettings(endpoint_url=ENDPOINT, region_name="us-east-1").client("s3")
    assert callable(client.upload_fileobj)


def test_another_data_path_gets_its_own_loader(tmp_path, monkeypatch):
    default = AWSSettings(endpoint_url=ENDPOINT, region_name="us-east-1").client("sqs")
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    custom = AWSSettings(endpoint_url=ENDPOINT, region_name="us-east-1").client("sqs")
    assert custom._loader is not default._loader
    assert str(tmp_path) in custom._loader.search_paths
