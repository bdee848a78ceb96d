"""The local SendGrid-compatible server of the tests and benchmarks (see server.py)."""

from support.sendgrid.server import (
    ENV_OPENAPI_DIR,
    OWN_SCHEMA,
    SHARED_OPENAPI_DIR,
    ApiError,
    SendGridServer,
    check_mail_limits,
    find_openapi_dir,
    load_schemas,
)

__all__ = [
    "ENV_OPENAPI_DIR",
    "OWN_SCHEMA",
    "SHARED_OPENAPI_DIR",
    "ApiError",
    "SendGridServer",
    "check_mail_limits",
    "find_openapi_dir",
    "load_schemas",
]
