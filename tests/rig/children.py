"""The servers the tests start end with the process that started them.

A pytest killed with kill -9 (or by a CI timeout) runs no teardown, and gunicorn's arbiter,
slapd or Samba would go on serving, holding their ports (Samba's 389 above all) and their
files into the next run. Started through util-linux's ``setpriv --pdeathsig``, a server is
sent SIGTERM by the kernel the moment the thread that started it ends, so fixtures must start
their servers from the test's own thread (they do: pytest runs fixtures there)."""
from __future__ import annotations

import shutil

DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
