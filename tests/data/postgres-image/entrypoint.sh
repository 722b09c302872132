#!/bin/sh
# What the postgres image's entrypoint does with an empty data directory, and only that: a
# cluster in UTF-8 whose superuser is POSTGRES_USER, the database POSTGRES_DB, clients from the
# network let in by POSTGRES_HOST_AUTH_METHOD; then the server, as the postgres user.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  install -d -o postgres -g postgres -m 700 "$PGDATA"
  runuser -u postgres -- initdb -D "$PGDATA" -U "$POSTGRES_USER" --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 >/dev/null
  echo "host all all all $POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"
  runuser -u postgres -- pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
  runuser -u postgres -- createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
  runuser -u postgres -- pg_ctl -D "$PGDATA" -w stop >/dev/null
fi
exec runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='*'
