"""The database under gymflow's background Prefect server: SQLite (Prefect's default) or PostgreSQL.

SQLite serves one person's runs and small sweeps; Prefect recommends PostgreSQL for anything larger
(many concurrent trials write to the API at once, and SQLite takes one writer at a time).
`gymflow server start --database postgresql://USER:PASSWORD@HOST:PORT/DATABASE` checks that the
database answers, then remembers the URL (in GYMFLOW_HOME, readable by its owner only) for every
later start, until `--database sqlite` goes back to the default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gymflow.errors import UserError
from gymflow.paths import home

logger = logging.getLogger(__name__)

POSTGRES_FORM = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
CONNECT_TIMEOUT_S = 10.0
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")


@dataclass(frozen=True)
class Database:
    """A Prefect server database: `url` is None for Prefect's default SQLite file."""

    url: str | None = None

    @property
    def dialect(self) -> str:
        return "postgresql" if self.url and self.url.startswith("postgresql") else "sqlite"

    def shown(self) -> str:
        """For people and logs: the password never appears."""
        if self.url is None:
            return "SQLite (Prefect's default database file)"
        return f"{self.dialect_name} {_masked(self.url)}"

    @property
    def dialect_name(self) -> str:
        return "PostgreSQL" if self.dialect == "postgresql" else "SQLite"

    def env(self) -> dict[str, str]:
        """What the server process needs in its environment."""
        return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": self.url} if self.url else {}


def parse(text: str) -> Database:
    """`--database`: a PostgreSQL URL (any of Prefect's spellings), `sqlite` for the default, or a SQLite URL."""
    given = text.strip()
    if given.lower() in ("sqlite", "default"):
        return Database(None)
    parts = urlsplit(given)
    scheme = parts.scheme.lower()
    if scheme in _POSTGRES_SCHEMES:
        if not parts.hostname or not parts.path.strip("/"):
            raise UserError(f"--database {_masked(given)!r}: give host and database name, as {POSTGRES_FORM}")
        return Database(urlunsplit(parts._replace(scheme="postgresql+asyncpg")))
    if scheme in ("sqlite", "sqlite+aiosqlite") and parts.path.strip("/"):
        return Database(urlunsplit(parts._replace(scheme="sqlite+aiosqlite")))
    raise UserError(f"--database {_masked(given)!r}: Prefect's server runs on PostgreSQL or SQLite; give {POSTGRES_FORM}, "
                    f"or `sqlite` for Prefect's default database file")


def _masked(text: str) -> str:
    parts = urlsplit(text)
    if parts.password is None:
        return text
    return text.replace(f":{parts.password}@", ":***@", 1)


def check(db: Database) -> None:
    """Connect once, so a wrong password, host or database name is a clear error before any server starts."""
    if db.dialect != "postgresql" or db.url is None:
        return
    import asyncpg

    parts = urlsplit(db.url)
    dsn = urlunsplit(parts._replace(scheme="postgresql"))
    where = f"{parts.hostname}:{parts.port or 5432}"
    name = parts.path.strip("/")

    async def connect() -> None:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
        await conn.close()

    try:
        asyncio.run(connect())
    except asyncpg.InvalidPasswordError:
        raise UserError(f"--database: PostgreSQL at {where} refused the password of user {parts.username!r}: "
                        f"fix USER:PASSWORD in {POSTGRES_FORM}") from None
    except asyncpg.InvalidCatalogNameError:
        raise UserError(f"--database: PostgreSQL at {where} has no database {name!r}: create it "
                        f"(`createdb -h {parts.hostname} -p {parts.port or 5432} -U {parts.username} {name}`) "
                        f"or name an existing one") from None
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise UserError(f"--database: PostgreSQL at {where} refused user {parts.username!r}: {exc}") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise UserError(f"--database: nothing answers at {where} ({exc.__class__.__name__}: {exc}): start PostgreSQL "
                        f"there, or fix HOST:PORT in {POSTGRES_FORM}") from None
    except asyncpg.PostgresError as exc:
        raise UserError(f"--database: PostgreSQL at {where} refused the connection: {exc}") from None


def _saved_file() -> Path:
    return home() / "database.json"


def saved() -> Database:
    """The database chosen with the last `--database`, else Prefect's default."""
    try:
        return Database(json.loads(_saved_file().read_text(encoding="utf-8")).get("url"))
    except (OSError, ValueError, AttributeError):
        return Database(None)


def save(db: Database) -> None:
    """Remember the choice for later starts; the file holds a password, so only its owner may read it."""
    path = _saved_file()
    if db.url is None:
        path.unlink(missing_ok=True)
        return
    write_private(path, json.dumps({"url": db.url}))
    logger.info("the background Prefect server will use %s from now on", db.shown())


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it may hold a database password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
