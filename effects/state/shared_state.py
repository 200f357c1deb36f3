"""The drift monitor's state in a SQL database every worker reaches: which batches
were claimed and processed, which were accepted or rejected for training, when the
last drift event was: the SQL backend of `effects.state.store.MonitorStore`, which
`effects.state.monitor_state` uses whenever one is configured (its files under
`<home>/monitor/`, effects/state/files.py, only when none is).

Why a SQL table, and not the alternatives the issue names:

* Every claim is one statement whose outcome the database decides atomically: a
  batch is claimed by `INSERT ... ON CONFLICT DO UPDATE ... WHERE <the old claim
  is done with>` (rowcount 1: this worker checks it; 0: another worker has it),
  the cool-down by the same conditional upsert of one row (`WHERE at <= now -
  cool-down`). PostgreSQL re-checks the WHERE against the committed row when two
  workers race; SQLite serialises writers. No read-then-write window, no lock
  that a dead worker could keep.
* The live stack already runs a PostgreSQL server every worker reaches when it is
  started with `lepton up --db` (MLflow's and Prefect's backend): the state lives
  in a third database beside theirs (NAME_lepton, created on first use), so
  nothing new has to be operated.
* Prefect variables have no compare-and-swap: two workers reading "no event yet"
  would both write one. Prefect's concurrency limits serialise work but store
  nothing, so a worker would still need somewhere to record what it processed.
* S3 conditional writes do work on the stack's SeaweedFS (4.48 answers a second
  `PUT If-None-Match: *` and a stale `If-Match` with 412 PreconditionFailed), but
  an S3-compatible server that ignores the header answers 200 and overwrites: every
  worker would "win" with nothing to show it. S3 also has no transaction over two
  keys (a rejection takes a batch off one list and puts it on another), and the
  processed set would be a paginated LIST at every run.

Which database: LEPTON_STATE_DB (any SQLAlchemy URL: postgresql://... or
sqlite:///path, e.g. on a shared volume); else, while a `lepton up --db
postgresql://.../NAME` stack is configured for this home, NAME_lepton on that
server; else none (local files, one machine). The first time a home's process
uses a database, that home's local state is copied into it once (a row
`imported:<home>` records it), so switching to a shared store loses no batch, no
acceptance and no cool-down. The files stay as they were, unused.

Times are the workers' clocks (epoch seconds): cool-downs are minutes long, far
longer than the skew of clocks kept by NTP.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, create_engine, delete, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from effects.runtime import stack_state
from effects.runtime.settings import Settings, redact_uri
from effects.state import store
from effects.state.store import ACCEPTED_FIELDS, CLAIM_LEASE_S, MonitorStore
from lepton_core.errors import LeptonError

meta = MetaData()
batches_t = Table(
    "lepton_monitor_batches",
    meta,
    Column("name", String(512), primary_key=True),
    Column("status", String(16), nullable=False),  # "claimed" or "done"
    Column("owner", String(256), nullable=False),  # the claimer: host:pid:start-ticks (effects.runtime.procs)
    Column("at", Float, nullable=False),
)
accepted_t = Table(
    "lepton_monitor_accepted",
    meta,
    Column("id", String(512), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("format", String(64)),
    Column("path", Text, nullable=False),
    Column("accepted_at", Float),
    Column("rows", Integer),
)
rejected_t = Table(
    "lepton_monitor_rejected",
    meta,
    Column("id", String(512), primary_key=True),
    Column("path", Text, nullable=False),
    Column("rejected_at", Float, nullable=False),
)
meta_t = Table(
    "lepton_monitor_meta",
    meta,
    Column("key", String(1024), primary_key=True),
    Column("at", Float, nullable=False),
    Column("value", Text),
)

_LOCK_KEY = 0x1E7700  # pg_advisory_xact_lock key of the read-modify-write steps


def url_for(s: Settings) -> str | None:
    """The shared store's URL for these settings, None for local files."""
    if s.state_db:
        return s.state_db
    st = stack_state.configured(s.home)
    if st and st.get("db_url"):
        return stack_state.state_db_url(st["db_url"])
    return None


# ---------------------------------------------------------------- engines
_engines: dict[str, Engine] = {}
_ready: set[tuple[str, str]] = set()
_guard = threading.Lock()


def _is_pg(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def _normal(url: str) -> str:
    scheme, rest = url.split(":", 1)
    return ("postgresql+psycopg2:" + rest) if scheme in ("postgresql", "postgres") else url


def _create_pg_database(url: str) -> None:
    import psycopg2
    from psycopg2 import errors, sql

    parts = urlsplit(url)
    name = parts.path.strip("/")
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    conn = psycopg2.connect(admin, connect_timeout=10)
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except errors.DuplicateDatabase:
        pass  # another worker created it first
    finally:
        conn.close()


def _failed(url: str, e: DBAPIError) -> LeptonError:
    first = (str(e.orig).strip().splitlines() or ["no answer"])[0]
    return LeptonError(
        f"the monitor's shared state database {redact_uri(url)} failed: {first} (LEPTON_STATE_DB, or `lepton up --db`)"
    )


def _one_line_errors(method):
    """A database that cannot be reached is one line naming it, not a traceback."""

    @functools.wraps(method)
    def wrapper(self, *a, **kw):
        try:
            return method(self, *a, **kw)
        except DBAPIError as e:
            raise _failed(self.url, e) from None

    return wrapper


def _make_engine(url: str) -> Engine:
    if _is_pg(url):
        eng = create_engine(_normal(url), poolclass=NullPool, connect_args={"connect_timeout": 10})
        try:
            eng.connect().close()
        except OperationalError as e:
            if "does not exist" not in str(e):
                raise _failed(url, e) from None
            _create_pg_database(_normal(url).replace("postgresql+psycopg2:", "postgresql:", 1))
        return eng
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    eng = create_engine(url, poolclass=NullPool, connect_args={"timeout": 60})

    # Every transaction takes SQLite's write lock at BEGIN: writers queue, none of
    # them reads a state another is about to change.
    @event.listens_for(eng, "connect")
    def _autocommit_driver(dbapi_conn, _rec):
        dbapi_conn.isolation_level = None

    @event.listens_for(eng, "begin")
    def _begin_immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return eng


class SharedState(MonitorStore):
    """The monitor's state in the database at `url`; `home`'s local files are
    imported into it the first time."""

    def __init__(self, url: str, home: Path):
        self.url, self.home = url, home
        self.pg = _is_pg(url)
        with _guard:
            if url not in _engines:
                _engines[url] = _make_engine(url)
            self.engine = _engines[url]
        if (url, str(home)) not in _ready:
            self._setup()
            _ready.add((url, str(home)))

    def _insert(self, table):
        return (postgresql if self.pg else sqlite).insert(table)

    @contextmanager
    def _locked(self):
        """One transaction that no other read-modify-write step runs beside."""
        with self.engine.begin() as conn:
            if self.pg:
                conn.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
            yield conn

    @_one_line_errors
    def _setup(self) -> None:
        with self._locked() as conn:
            meta.create_all(conn, checkfirst=True)
            key = f"imported:{self.home}"
            first = (
                conn.execute(
                    self._insert(meta_t)
                    .values(key=key, at=time.time(), value=None)
                    .on_conflict_do_nothing(index_elements=[meta_t.c.key])
                ).rowcount
                == 1
            )
            if first:
                self._import_local(conn)

    def _import_local(self, conn: Connection) -> None:
        """This home's files under monitor/ (what it did before a shared store was
        configured), once."""
        root = self.home / "monitor"

        def read(name, default):
            p = root / name
            return json.loads(p.read_text()) if p.exists() else default

        now = time.time()
        for name in read("processed.json", []):
            conn.execute(
                self._insert(batches_t)
                .values(name=name, status="done", owner="imported", at=now)
                .on_conflict_do_update(index_elements=[batches_t.c.name], set_={"status": "done"})
            )
        for r in read("rejected.json", []):
            conn.execute(
                self._insert(rejected_t)
                .values(id=r["id"], path=r["path"], rejected_at=r["rejected_at"])
                .on_conflict_do_nothing(index_elements=[rejected_t.c.id])
            )
        rejected = {r[0] for r in conn.execute(select(rejected_t.c.id))}
        for b in read("accepted.json", []):
            if b["id"] not in rejected:
                self._append_accepted(conn, b)
        last = read("last_event.json", None)
        if last is not None:
            t = float(last["time"])
            payload = json.dumps({k: v for k, v in last.items() if k != "time"})
            conn.execute(
                self._insert(meta_t)
                .values(key="last_event", at=t, value=payload)
                .on_conflict_do_update(
                    index_elements=[meta_t.c.key], set_={"at": t, "value": payload}, where=meta_t.c.at < t
                )
            )

    # ------------------------------------------------------------ batches
    @_one_line_errors
    def processed(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(batches_t.c.name).where(batches_t.c.status == "done"))}

    @_one_line_errors
    def mark_processed(self, names: list[str]) -> None:
        now, me = time.time(), store.owner_id()
        with self.engine.begin() as conn:
            for name in sorted(set(names)):
                conn.execute(
                    self._insert(batches_t)
                    .values(name=name, status="done", owner=me, at=now)
                    .on_conflict_do_update(
                        index_elements=[batches_t.c.name], set_={"status": "done", "owner": me, "at": now}
                    )
                )

    @_one_line_errors
    def claim(self, names: list[str], lease_s: float = CLAIM_LEASE_S) -> list[str]:
        """Each claim is one conditional upsert."""
        if not names:
            return []
        now, me = time.time(), store.owner_id()
        with self.engine.connect() as conn:
            held = {
                r[0]
                for r in conn.execute(
                    select(batches_t.c.owner).where(batches_t.c.name.in_(names), batches_t.c.status == "claimed")
                )
            }
        dead = sorted(store.dead_owners(held))
        won = set()
        takeover = (batches_t.c.at < now - lease_s) | (batches_t.c.owner == me)
        if dead:
            takeover = takeover | batches_t.c.owner.in_(dead)
        for name in dict.fromkeys(names):
            # one transaction per batch: two workers listing the same batches at once
            # share them out, rather than the first taking them all
            stmt = (
                self._insert(batches_t)
                .values(name=name, status="claimed", owner=me, at=now)
                .on_conflict_do_update(
                    index_elements=[batches_t.c.name],
                    set_={"owner": me, "at": now},
                    where=(batches_t.c.status == "claimed") & takeover,
                )
            )
            with self.engine.begin() as conn:
                if conn.execute(stmt).rowcount == 1:
                    won.add(name)
        return [n for n in names if n in won]

    @_one_line_errors
    def release(self, names: list[str]) -> None:
        """Give back claims this process holds and did not process."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(batches_t).where(
                    batches_t.c.name.in_(names), batches_t.c.status == "claimed", batches_t.c.owner == store.owner_id()
                )
            )

    # ------------------------------------------------------------ accepted / rejected
    @_one_line_errors
    def accepted(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(accepted_t).order_by(accepted_t.c.seq)).mappings().all()
        return [{k: r[k] for k in ACCEPTED_FIELDS} for r in rows]

    @_one_line_errors
    def rejected(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(rejected_t).order_by(rejected_t.c.rejected_at)).mappings().all()
        return [dict(r) for r in rows]

    def _append_accepted(self, conn: Connection, b: dict) -> None:
        if conn.execute(select(accepted_t.c.id).where(accepted_t.c.id == b["id"])).first() is None:
            top = conn.execute(select(func.coalesce(func.max(accepted_t.c.seq), 0))).scalar()
            assert top is not None  # an aggregate always has one row, and coalesce makes it 0 on an empty table
            seq = top + 1
            conn.execute(
                accepted_t.insert().values(
                    id=b["id"],
                    seq=seq,
                    format=b.get("format"),
                    path=b["path"],
                    accepted_at=b.get("accepted_at"),
                    rows=b.get("rows"),
                )
            )

    @_one_line_errors
    def accept(self, entry: dict) -> bool:
        """List `entry` for the next retrain; False when it was rejected."""
        with self._locked() as conn:
            if conn.execute(select(rejected_t.c.id).where(rejected_t.c.id == entry["id"])).first():
                return False
            self._append_accepted(conn, entry)
        return True

    @_one_line_errors
    def reject(self, batch: str) -> dict:
        with self._locked() as conn:
            accepted = [dict(r) for r in conn.execute(select(accepted_t).order_by(accepted_t.c.seq)).mappings()]
            entry = store.pick_accepted(accepted, batch)
            conn.execute(delete(accepted_t).where(accepted_t.c.id == entry["id"]))
            conn.execute(
                self._insert(rejected_t)
                .values(id=entry["id"], path=entry["path"], rejected_at=time.time())
                .on_conflict_do_nothing(index_elements=[rejected_t.c.id])
            )
        return entry

    # ------------------------------------------------------------ drift events
    @_one_line_errors
    def last_event(self) -> dict | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(meta_t.c.at, meta_t.c.value).where(meta_t.c.key == "last_event")).first()
        return None if r is None else {"time": r[0], **json.loads(r[1] or "{}")}

    @_one_line_errors
    def claim_event(self, minutes: float, payload: dict) -> tuple[float, float] | None:
        """One conditional upsert."""
        now, window = time.time(), minutes * 60
        value = json.dumps(payload, sort_keys=True, default=str)
        stmt = (
            self._insert(meta_t)
            .values(key="last_event", at=now, value=value)
            .on_conflict_do_update(
                index_elements=[meta_t.c.key], set_={"at": now, "value": value}, where=meta_t.c.at <= now - window
            )
        )
        with self.engine.begin() as conn:
            if conn.execute(stmt).rowcount == 1:
                return None
            last = conn.execute(select(meta_t.c.at).where(meta_t.c.key == "last_event")).scalar()
        assert last is not None  # the upsert did not win, so the row exists (it is never deleted; `at` is NOT NULL)
        return float(last), float(last) + window
