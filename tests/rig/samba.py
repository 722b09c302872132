"""A real Samba Active Directory DC, provisioned into a temp dir, serving LDAP on 127.0.0.1:389.

Samba's LDAP server cannot be moved off 389, so only one can run per machine; if the port is
taken the fixture fails with a message saying so. Simple binds over plain LDAP need
``ldap server require strong auth = no``. Users are added over LDAP (fast); the bind account
``svc-avatar`` is made with samba-tool before the server starts (it needs a password).
sAMAccountName is unique across the whole domain: tests must pick distinct usernames.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import ldap3

from tests.rig.children import DIE_WITH_PARENT

REALM = "AVSYNC.TEST"
BASE_DN = "DC=avsync,DC=test"
ADMIN_DN = f"CN=Administrator,CN=Users,{BASE_DN}"
ADMIN_PW = "Adm1n-Passw0rd!"
SVC_NAME = "svc-avatar"
SVC_DN = f"CN={SVC_NAME},CN=Users,{BASE_DN}"
SVC_PW = "Svc-Avatar-Passw0rd!"
URL = "ldap://127.0.0.1:389"


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class SambaDC:
    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.conf = self.dir / "dc" / "etc" / "smb.conf"
        self.proc: subprocess.Popen | None = None
        self.url = URL

    def provision(self) -> None:
        if not shutil.which("samba-tool") or not Path("/usr/sbin/samba").exists():
            raise RuntimeError("Samba AD DC is not installed: apt-get install samba samba-ad-dc")
        if port_in_use(389):
            raise RuntimeError("port 389 on 127.0.0.1 is taken (another LDAP server or Samba is running); "
                               "the Samba AD DC test server needs it: stop that server and run again")
        subprocess.run(
            ["samba-tool", "domain", "provision", f"--realm={REALM}", "--domain=AVSYNC",
             "--server-role=dc", "--dns-backend=NONE", f"--adminpass={ADMIN_PW}",
             f"--targetdir={self.dir / 'dc'}", "--host-ip=127.0.0.1",
             "--option=interfaces=lo", "--option=bind interfaces only=yes",
             "--option=server services = ldap"],
            check=True, capture_output=True, timeout=180)
        text = self.conf.read_text()
        text = text.replace("[global]\n", "[global]\n\tldap server require strong auth = no\n"
                            f"\tlog file = {self.dir}/log.%m\n", 1)
        text = "\n".join(line for line in text.splitlines() if "/var/log/samba" not in line) + "\n"
        self.conf.write_text(text)
        subprocess.run(["samba-tool", "user", "create", SVC_NAME, SVC_PW, "-s", str(self.conf)],
                       check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        if port_in_use(389):
            raise RuntimeError("port 389 on 127.0.0.1 is taken; cannot start the Samba AD DC test server")
        log = open(self.dir / "samba.out", "ab")
        self.proc = subprocess.Popen([*DIE_WITH_PARENT, "/usr/sbin/samba", "-s", str(self.conf), "-i", "-M", "single"],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"samba exited ({self.proc.returncode}): "
                                   + (self.dir / "samba.out").read_text(errors="replace")[-2000:])
            if port_in_use(389):
                try:
                    self.admin().unbind()
                    return
                except ldap3.core.exceptions.LDAPException:
                    pass
            time.sleep(0.2)
        raise RuntimeError("samba did not answer on 127.0.0.1:389 within 60 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def admin(self) -> ldap3.Connection:
        server = ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=5)
        return ldap3.Connection(server, ADMIN_DN, ADMIN_PW, auto_bind=True, receive_timeout=10,
                                raise_exceptions=True)

    def add_ou(self, name: str) -> str:
        dn = f"OU={name},{BASE_DN}"
        with self.admin() as c:
            c.add(dn, ["organizationalUnit"], {"ou": name})
        return dn

    def add_user(self, base_dn: str, sam: str, thumbnail_photo: bytes | None = None,
                 jpeg_photo: bytes | None = None) -> str:
        dn = f"CN={ldap3.utils.dn.escape_rdn(sam)},{base_dn}"
        attrs: dict[str, str | bytes] = {"sAMAccountName": sam, "userPrincipalName": f"{sam}@avsync.test"}
        if thumbnail_photo is not None:
            attrs["thumbnailPhoto"] = thumbnail_photo
        if jpeg_photo is not None:
            attrs["jpegPhoto"] = jpeg_photo
        with self.admin() as c:
            c.add(dn, ["top", "person", "organizationalPerson", "user"], attrs)
        return dn

    def set_photo(self, dn: str, attribute: str, value: bytes | None) -> None:
        with self.admin() as c:
            c.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [value] if value is not None else [])]})
