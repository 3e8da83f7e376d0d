"""Where a task hub lives: connection string, account URL + DefaultAzureCredential, env."""

from __future__ import annotations

import pytest
from azure.identity.aio import DefaultAzureCredential

from durable_azure import ConfigurationError, StorageSettings
from durable_azure.storage.rest import TokenAuth

URL = "https://myaccount.blob.core.windows.net"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "DURABLE_STORAGE_ACCOUNT_URL",
                 "DURABLE_TASK_HUB", "DURABLE_PARTITION_COUNT",
                 "DURABLE_STORAGE_TRANSPORT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


async def test_account_url_uses_default_azure_credential_by_default() -> None:
    account = StorageSettings.resolve(account_url=URL).open_account()
    try:
        credential = account._queue_service.credential  # type: ignore[attr-defined]
        assert isinstance(credential, DefaultAzureCredential)
        queue_client = account.queue("q")._client  # type: ignore[attr-defined]
        assert queue_client.url.startswith("https://myaccount.queue.core.windows.net/q")
        assert account.container("c").url == "https://myaccount.blob.core.windows.net/c"
        # The hot requests carry the same credential's bearer token.
        lean = account._lean  # type: ignore[attr-defined]
        assert isinstance(lean._auth, TokenAuth)
        assert lean._auth._credential is credential
    finally:
        await account.close()


async def test_the_transport_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert StorageSettings.resolve().transport == "lean"
    monkeypatch.setenv("DURABLE_STORAGE_TRANSPORT", "sdk")
    settings = StorageSettings.resolve()
    assert settings.transport == "sdk"
    account = settings.open_account()
    try:
        assert account._lean is None  # type: ignore[attr-defined]
    finally:
        await account.close()
    monkeypatch.setenv("DURABLE_STORAGE_TRANSPORT", "quick")
    with pytest.raises(ConfigurationError, match="unknown storage transport 'quick'"):
        StorageSettings.resolve()


def test_account_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_STORAGE_ACCOUNT_URL", URL)
    settings = StorageSettings.resolve()
    assert settings.account_url == URL
    assert settings.connection_string is None
    assert "myaccount" in settings.describe()


def test_connection_string_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_STORAGE_ACCOUNT_URL", URL)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true")
    settings = StorageSettings.resolve()
    assert settings.connection_string == "UseDevelopmentStorage=true"
    assert settings.account_url is None


def test_nothing_configured_means_azurite() -> None:
    assert StorageSettings.resolve().connection_string == "UseDevelopmentStorage=true"


def test_an_account_url_without_a_host_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="account name"):
        StorageSettings.resolve(account_url="not a url")
