#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use is up: the store's PostgreSQL backend runs its
# conformance suite and fault tests against a real server (each test in a schema of its own,
# dropped at its end). The machines run PostgreSQL 15 on 127.0.0.1:5432 with trust auth and a
# `test` database; this starts it when it is down, and on a machine without it installs Debian's
# package and sets it up the same way (needs root). Tests read HOOKYARD_TEST_DATABASE_URL,
# default postgres://postgres@127.0.0.1:5432/test.
set -euo pipefail
url=${HOOKYARD_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}

reachable() { psql "$url" -Atqc 'SELECT 1' >/dev/null 2>&1; }
if reachable; then exit 0; fi

fresh=0
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
    fresh=1
fi
read -r version cluster _ < <(pg_lsclusters -h | head -n 1)
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    pg_ctlcluster "$version" "$cluster" start
fi
for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
done
if [ "$fresh" = 1 ]; then
    # as on the machines: trust on loopback, and the `test` database
    hba=$(su postgres -c "psql -Atqc 'SHOW hba_file'")
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    pg_ctlcluster "$version" "$cluster" reload
    su postgres -c "createdb test" || true
fi
if ! reachable; then
    echo "scripts/postgres.sh: PostgreSQL at $url is not reachable (pg_lsclusters: $(pg_lsclusters -h | head -n 1))" >&2
    exit 1
fi
