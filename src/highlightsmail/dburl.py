"""What a `database` setting names: `workspace` checks the setting with these, and the
store opens what they describe. The PostgreSQL driver's URL reader loads only for a
PostgreSQL URL, so a SQLite workspace never loads the driver."""

from __future__ import annotations


def is_postgresql(target: str) -> bool:
    """Whether a `database` value (or HIGHLIGHTS_DATABASE_URL) names a PostgreSQL database."""
    return target.startswith(("postgresql://", "postgres://"))


def describe_url(url: str) -> str:
    """A PostgreSQL URL as it may be shown: user, host, port and database, never a password."""
    # Here, not at the top: the driver loads only for a PostgreSQL URL (see above).
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # an unreadable URL: show its scheme only, in case the rest holds a password
        return url.split("://", 1)[0] + "://..."
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host') or 'localhost'}{port}/{info.get('dbname') or ''}"


#: The problem of a URL that holds a password where none may be.
HOLDS_A_PASSWORD = "holds a password"


def url_problem(url: str, *, password_allowed: bool) -> str | None:
    """What is wrong with a PostgreSQL URL (None when it is fine): it must parse, and hold
    no password unless `password_allowed` (in the environment, not in a shared file)."""
    # Here, not at the top: the driver loads only for a PostgreSQL URL (see above).
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception as exc:
        if password_allowed:  # the driver's message may quote the URL, password and all
            return "not a PostgreSQL URL postgresql://user[:password]@host:port/dbname"
        first = (str(exc).strip().splitlines() or ["unreadable"])[0]
        return f"not a PostgreSQL URL postgresql://user@host:port/dbname ({first})"
    if info.get("password") and not password_allowed:
        return HOLDS_A_PASSWORD
    return None


__all__ = ["HOLDS_A_PASSWORD", "describe_url", "is_postgresql", "url_problem"]
