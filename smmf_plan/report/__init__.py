"""Renderers: JSON documents (versioned), rich tables, Markdown, SVG."""

#: version of every JSON document the CLI prints; bump on incompatible changes (additions don't).
SCHEMA_VERSION = 1
