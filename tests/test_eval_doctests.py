"""The examples in judgekit's docstrings are run, so they stay true."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["records", "verdicts", "prompts", "naming", "cli"])
def test_docstring_examples(name):
    module = importlib.import_module(f"judgekit.{name}")
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
