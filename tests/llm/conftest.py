"""Fixtures for the LLM backend tests: a real loopback OpenAI-compatible server per test
(tests/support/openai_server.py, on the test path through pytest's `pythonpath`)."""

from __future__ import annotations

import openai_server
import pytest


@pytest.fixture
def server():
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def Reply():
    return openai_server.Reply
