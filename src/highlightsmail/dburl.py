"""What a `database` setting names, without loading a database driver: `workspace`
checks the setting with these, and the store opens what they describe."""

from __future__ import annotations


def is_postgresql(target: str) -> bool:
    """Whether a `database` value (or HIGHLIGHTS_DATABASE_URL) names a PostgreSQL database."""
    return target.startswith(("postgresql://", "postgres://"))


def describe_url(url: str) -> str:
    """A PostgreSQL URL as it may be shown: user, host, port and database, never a password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # an unreadable URL: show its scheme only, in case the rest holds a password
        return url.split("://", 1)[0] + "://..."
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host') or 'localhost'}{port}/{info.get('dbname') or ''}"


__all__ = ["describe_url", "is_postgresql"]
