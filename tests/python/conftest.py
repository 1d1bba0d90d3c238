"""Shared fixtures: an OpenAI client pointed at the stator peer named by STATOR_URL."""

import os

import openai
import pytest


def _base_url() -> str:
    url = os.environ.get("STATOR_URL", "").rstrip("/")
    if not url:
        pytest.skip("STATOR_URL is not set (the integration harness sets it to a running peer)")
    return url if url.endswith("/v1") else url + "/v1"


@pytest.fixture(scope="session")
def base_url() -> str:
    return _base_url()


@pytest.fixture(scope="session")
def client(base_url: str) -> openai.OpenAI:
    # No retries: a test must see the first answer, not a retried one.
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model(client: openai.OpenAI) -> str:
    models = client.models.list().data
    assert models, "the server lists no model"
    return models[0].id
