"""A real OpenLDAP slapd on a random loopback port, configured offline in a temp dir.

Schemas: core, cosine, inetorgperson (jpegPhoto) plus a small auxiliary schema carrying AD's
thumbnailPhoto (OID 2.16.840.1.113730.3.1.35, the same definition Active Directory uses).
A service account ``cn=svc-avatar`` has AD-like limits (small size limit, paging allowed) so
a test exercises what a production bind account would see; the rootdn ignores limits.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import ldap3

from tests.rig.children import DIE_WITH_PARENT
from tests.rig.ports import free_port

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret"
SVC_DN = f"cn=svc-avatar,{SUFFIX}"
SVC_PW = "svc-secret"

CONFIG = """\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {dir}/slapd.pid
olcTLSCACertificateFile: {dir}/tls/ca.pem
olcTLSCertificateFile: {dir}/tls/server.pem
olcTLSCertificateKeyFile: {dir}/tls/server.key

dn: cn=module,cn=config
objectClass: olcModuleList
cn: module
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif

include: file:///etc/ldap/schema/cosine.ldif

include: file:///etc/ldap/schema/inetorgperson.ldif

dn: cn=adphoto,cn=schema,cn=config
objectClass: olcSchemaConfig
cn: adphoto
olcAttributeTypes: ( 2.16.840.1.113730.3.1.35 NAME 'thumbnailPhoto'
  DESC 'Active Directory thumbnail photo' EQUALITY octetStringMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 SINGLE-VALUE )
olcObjectClasses: ( 1.3.6.1.4.1.99999.4242.1 NAME 'adPhotoAux' AUXILIARY
  MAY thumbnailPhoto )

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {suffix}
olcRootDN: {root_dn}
olcRootPW: {root_pw}
olcDbDirectory: {dir}/data
olcDbMaxSize: 268435456
olcSizeLimit: 500
olcLimits: {{0}}dn.exact="{svc_dn}" size.soft={svc_limit} size.hard={svc_limit} size.pr=500 size.prtotal=unlimited
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by dn.exact="{svc_dn}" read by * none
olcDbIndex: uid eq
olcDbIndex: objectClass eq
"""


def make_certificates(tls_dir: Path) -> None:
    """A throw-away CA and a server certificate for the name localhost only (openssl CLI)."""
    tls_dir.mkdir(parents=True)

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=tls_dir)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=avatar-sync test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    (tls_dir / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")


class Slapd:
    def __init__(self, workdir: Path, svc_size_limit: int = 5):
        self.dir = Path(workdir)
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.tls_port = free_port()
        # the certificate names "localhost": ldap3 checks the host name, so connect by that name
        self.ldaps_url = f"ldaps://localhost:{self.tls_port}"
        self.ca_file = self.dir / "tls" / "ca.pem"
        self.svc_size_limit = svc_size_limit
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        """The running process's id."""
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.pid

    @classmethod
    def running(cls, workdir: Path, **kwargs) -> Slapd:
        """Configured, started and seeded with the base entries and the service account."""
        server = cls(workdir, **kwargs)
        server.configure()
        server.start()
        server.seed_base()
        return server

    def configure(self) -> None:
        for tool in ("slapd", "slapadd"):
            if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
                raise RuntimeError(f"{tool} is not installed: apt-get install slapd ldap-utils")
        (self.dir / "slapd.d").mkdir(parents=True)
        make_certificates(self.dir / "tls")
        (self.dir / "data").mkdir()
        ldif = self.dir / "config.ldif"
        ldif.write_text(CONFIG.format(dir=self.dir, suffix=SUFFIX, root_dn=ROOT_DN, root_pw=ROOT_PW,
                                      svc_dn=SVC_DN, svc_limit=self.svc_size_limit))
        subprocess.run(["/usr/sbin/slapadd", "-n0", "-F", str(self.dir / "slapd.d"), "-l", str(ldif)],
                       check=True, capture_output=True, timeout=30)

    def start(self) -> None:
        log = open(self.dir / "slapd.log", "ab")
        self.proc = subprocess.Popen(
            [*DIE_WITH_PARENT, "/usr/sbin/slapd", "-F", str(self.dir / "slapd.d"), "-h",
             f"{self.url}/ ldaps://127.0.0.1:{self.tls_port}/", "-d", "0"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited ({self.proc.returncode}): "
                                   + (self.dir / "slapd.log").read_text(errors="replace")[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("slapd did not start listening within 15 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def admin(self) -> ldap3.Connection:
        server = ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=5)
        return ldap3.Connection(server, ROOT_DN, ROOT_PW, auto_bind=True, receive_timeout=10,
                                raise_exceptions=True)

    def seed_base(self) -> None:
        with self.admin() as c:
            c.add(SUFFIX, ["dcObject", "organization"], {"dc": "example", "o": "Example"})
            c.add(SVC_DN, ["organizationalRole", "simpleSecurityObject"], {"userPassword": SVC_PW})

    def add_ou(self, name: str) -> str:
        dn = f"ou={name},{SUFFIX}"
        with self.admin() as c:
            c.add(dn, ["organizationalUnit"], {"ou": name})
        return dn

    def add_user(self, base_dn: str, uid: str, jpeg_photo: bytes | None = None,
                 thumbnail_photo: bytes | None = None) -> str:
        dn = f"uid={ldap3.utils.dn.escape_rdn(uid)},{base_dn}"
        attrs: dict[str, str | bytes] = {"uid": uid, "cn": uid, "sn": uid}
        classes = ["inetOrgPerson"]
        if jpeg_photo is not None:
            attrs["jpegPhoto"] = jpeg_photo
        if thumbnail_photo is not None:
            attrs["thumbnailPhoto"] = thumbnail_photo
            classes.append("adPhotoAux")
        with self.admin() as c:
            c.add(dn, classes, attrs)
        return dn

    def add_users(self, base_dn: str, users) -> None:
        """Many (uid, jpeg_photo or None) at once, over one connection."""
        with self.admin() as c:
            for uid, photo in users:
                attrs: dict[str, str | bytes] = {"uid": uid, "cn": uid, "sn": uid}
                if photo is not None:
                    attrs["jpegPhoto"] = photo
                c.add(f"uid={ldap3.utils.dn.escape_rdn(uid)},{base_dn}", ["inetOrgPerson"], attrs)

    def set_photo(self, dn: str, attribute: str, value: bytes | None) -> None:
        with self.admin() as c:
            if attribute == "thumbnailPhoto" and value is not None and not self._has_aux(c, dn):
                c.modify(dn, {"objectClass": [(ldap3.MODIFY_ADD, ["adPhotoAux"])]})
            c.modify(dn, {attribute: [(ldap3.MODIFY_REPLACE, [value] if value is not None else [])]})

    @staticmethod
    def _has_aux(c: ldap3.Connection, dn: str) -> bool:
        c.search(dn, "(objectClass=adPhotoAux)", search_scope=ldap3.BASE)
        return bool(c.entries)
