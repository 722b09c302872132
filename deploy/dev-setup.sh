#!/usr/bin/env bash
# Sets up a development / CI machine (Debian 12, as root): the directory servers the tests and
# the demo run (OpenLDAP slapd, Samba AD DC), Groovy for the Jira listener's test, Chromium for
# the dashboard's browser test, promtool for the alert rules, HAProxy for the replica tests, wrk
# for the benchmarks, podman with runc (crun cannot start containers on these machines) and
# debootstrap for the container tests, iptables for the database partition tests, PgBouncer for
# the pooler tests, a running PostgreSQL, and a venv with the package (its test extra brings
# podman-compose).
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(slapd ldap-utils samba samba-ad-dc winbind krb5-user groovy chromium prometheus podman runc debootstrap haproxy wrk iptables pgbouncer)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> apt-get install ${missing[*]}"
  # The tests run their own slapd and Samba on loopback: keep the packages' system services
  # from starting (a system Samba or slapd would take port 389).
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# PostgreSQL: the store tests run on it as well as on SQLite.
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "==> starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi

python=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $python"
  "$python" -m venv .venv
fi
echo "==> pip install -e '.[test]'"
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
