"""One CA for every otad instance on a shared PostgreSQL store: the files of certs/ are kept in the database.

Each instance still reads its identities from its own ``certs/`` (keys mode 0600); what the
database adds is the one copy they all come from. ``synchronise`` runs under the store's CA lock
(a PostgreSQL advisory lock), so of several instances starting at once exactly one creates the
CA and the others find it: it writes the stored files into ``certs/``, lets ``ca.bootstrap``
load them (creating what has never existed, renewing what needs it), and stores whatever that
created or renewed as a new generation. The daily check does the same, so a leaf is renewed by
the first instance to find it due and the others take the renewed file; each instance also polls
the generation, and serves a renewal made elsewhere within a minute.

The price of this choice: whoever can read the database (its credentials, its backups) can
read the CA key. The README says how to guard that.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from otad.ca import OWN_FILES, Authority, BootstrapError
from otad.files import make_directory, write_atomically
from otad.store import Store


def _read(certs_dir: Path) -> dict[str, bytes]:
    found = {}
    for name in OWN_FILES:
        path = certs_dir / name
        if path.exists():
            found[name] = path.read_bytes()
    return found


def synchronise(store: Store, certs_dir: Path, load: Callable[[], Authority], *, now: float) -> tuple[Authority, int, list[str]]:
    """Bring ``certs_dir`` up to the database's copy, ``load`` it, and store what loading created or renewed.

    Runs on a store thread, in one transaction under the CA lock (RSA key generation included,
    on the first start). Returns the authority, the stored generation, and one line per file
    taken from or given to the database. A ``certs_dir`` whose root CA is not the stored one
    stops the start: otad never replaces a CA that may be in use.
    """
    lines: list[str] = []
    with store.transaction():
        store.lock_ca()
        stored = store.ca_files()
        local = _read(certs_dir)
        if stored:
            if "ca.pem" in local and local["ca.pem"] != stored.get("ca.pem"):
                raise BootstrapError(
                    f"{certs_dir} holds another root CA than the database {store.location}; move {certs_dir} aside "
                    "so that this instance takes the shared CA"
                )
            make_directory(certs_dir)
            taken = [name for name, content in stored.items() if local.get(name) != content]
            for name in taken:
                write_atomically(certs_dir / name, stored[name], 0o600 if name.endswith(".key") else 0o644, keep_mode=False)
            if taken:
                lines.append(f"took {', '.join(taken)} from the database into {certs_dir}")
        elif "ca.key" not in local and store.has_certificates():
            raise BootstrapError(
                f"the database {store.location} holds certificates but no CA: start first the instance whose certs/ "
                "issued them, or copy that certs/ in with otad-admin store migrate"
            )
        authority = load()
        given = {name: content for name, content in _read(certs_dir).items() if stored.get(name) != content}
        if given:
            generation = store.put_ca_files(given, now=now)
            lines.append(f"stored {', '.join(sorted(given))} in the database (generation {generation})")
        else:
            generation = store.ca_generation()
    return authority, generation, lines
