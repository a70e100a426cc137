#!/bin/sh
# Initializes $PGDATA on first start (user, password and database from the environment), then runs
# PostgreSQL in the foreground listening on every address.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_PASSWORD:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	pw=$(mktemp)
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
	chown postgres "$pw"
	su postgres -s /bin/sh -c "initdb -D '$PGDATA' -U '$POSTGRES_USER' --pwfile='$pw' --auth-local=trust --auth-host=scram-sha-256" >/dev/null
	rm -f "$pw"
	printf "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n" >>"$PGDATA/pg_hba.conf"
	if [ "$POSTGRES_DB" != "postgres" ]; then
		su postgres -s /bin/sh -c "postgres --single -D '$PGDATA' postgres" >/dev/null <<SQL
CREATE DATABASE "$POSTGRES_DB";
SQL
	fi
fi
exec su postgres -s /bin/sh -c "exec postgres -D '$PGDATA' -c listen_addresses='*'"
