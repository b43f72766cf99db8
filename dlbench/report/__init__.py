"""Comparisons and reports: protocol-checked tables, statistics, plots and static HTML."""
