"""Example third-party dlbench plugin (see docs/plugins.md)."""
