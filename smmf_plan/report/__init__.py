"""Renderers: JSON documents (versioned), rich tables, Markdown, SVG."""

#: version of every JSON document the CLI prints; bump on incompatible changes (additions don't).
#: 2: each step estimate's parts moved into ``"breakdown"`` (README, "Changes from schema 1").
SCHEMA_VERSION = 2
