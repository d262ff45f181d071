"""pytest-mcp: a pytest plugin that streams every test result to a pytest-mcp recorder.

The plugin itself is :mod:`pytest_mcp.plugin`, registered through the
``pytest11`` entry point; it does nothing unless enabled with ``--mcp``.
"""

__version__ = "0.1.0"
