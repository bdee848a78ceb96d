"""What the tests share: one way to start each real server (SMTP, PostgreSQL, Dovecot,
the SendGrid stand-in, Chromium, the web app in-process or as a process), one free-port
helper, the tests' own example workspace, and the helpers of each area. Imported as
`support.*` (pyproject.toml puts tests/ on the path); the benchmarks use them too."""
