"""Rendering: an issue through Jinja, MJML and premailer into a RenderedIssue, once per
issue; the archive (`publish`) from the same views."""
