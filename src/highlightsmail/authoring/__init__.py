"""Authoring: highlights.yaml and the issue files read with the place of every value, the
models, Markdown, the settings and the scaffold (`init`, `new`)."""
