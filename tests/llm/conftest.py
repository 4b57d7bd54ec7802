"""Fixtures for the LLM backend tests: a real loopback OpenAI-compatible server per test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def load_server_module():
    """tests/llm/openai_server.py, importable from any test directory (pytest runs in importlib mode)."""
    name = "tunelab_tests_openai_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("openai_server.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def server():
    mod = load_server_module()
    srv = mod.OpenAIServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def Reply():
    return load_server_module().Reply
