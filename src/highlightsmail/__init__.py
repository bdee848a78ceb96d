"""highlightsmail: publish a weekly email newsletter from YAML issue files."""

__version__ = "0.1.0"
