"""A Jira Data Center stand-in for the REST calls jira-avatar-sync makes.

Built from docs/jira-api.md (section numbers below). It models what a client
can get wrong: the temporary avatar lives in the HTTP session (JSESSIONID), the XSRF header,
the content-type whitelist, size and megapixel checks, the 500 px clamp, crop bounds, the
<= 48 px square shortcut, avatarUrls with ownerId/avatarId, user search by prefix with its
cap per version, /user/list cursor paging (10.3+), application roles and group membership
(50 a page, total, 404 for an unknown group, inactive users left out), Gravatar, CAPTCHA after
failed logins, 429 with Retry-After, injectable latency and faults, and how many calls of each
kind were in flight at once.

Run it on its own:  python -m tests.jira_emulator --port 8090 [--version 10.3] [--users 50]
Control endpoints (no auth) live under /_emulator/: see ``control`` below.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, g, jsonify, request
from PIL import Image

from tests.rig.keepalive_server import KeepAliveServer
from tests.rig.ports import free_port

SYSTEM_AVATAR_IDS = [str(i) for i in range(10122, 10142)]
DEFAULT_AVATAR_ID = "10122"          # APKeys.JIRA_DEFAULT_USER_AVATAR_ID (varies per instance)
CONTENT_TYPES = {"image/jpeg", "image/gif", "image/png", "image/pjpeg", "image/x-png"}  # §1.2
MAX_TEMP_SIDE = 500                  # temporary images are scaled to fit 500x500 (§1.2)
MAX_MEGAPIXELS = 5                   # jira.avatar.megapixels
ATTACHMENT_SIZE = 10 * 1024 * 1024   # jira.attachment.size
CAPTCHA_AFTER = 3                    # failed logins before Seraph demands a CAPTCHA (§6)
DEFAULT_GROUP = "jira-software-users"
GROUP_PAGE = 50                      # group/member answers at most 50 users a page (§4.3)
SIZES = {"xsmall": 16, "small": 24, "medium": 32, "large": 48, "xlarge": 64, "xxlarge": 96,
         "xxxlarge": 128, "xxlarge@2x": 192, "xxxlarge@2x": 256}


@dataclass
class Avatar:
    id: str
    owner: str | None      # user key; None for system avatars
    source: Image.Image    # the cropped square as confirmed
    file_name: str = ""    # the upload's filename, listed as fileName by DC 10+ (§1.1)
    _image: Image.Image | None = None
    _png: bytes | None = None

    @property
    def image(self) -> Image.Image:
        """The 256 px rendition Jira derives all sizes from (§5); made when first asked for,
        as the PNG below: a benchmark's thousands of uploads skip the cost."""
        if self._image is None:
            self._image = self.source.resize((256, 256), Image.Resampling.LANCZOS)
        return self._image

    @property
    def png(self) -> bytes:
        """Encoded when first asked for: a benchmark's thousands of uploads skip the cost."""
        if self._png is None:
            out = io.BytesIO()
            self.image.save(out, "PNG")
            self._png = out.getvalue()
        return self._png


@dataclass
class User:
    name: str
    key: str
    display_name: str
    email: str
    active: bool = True
    avatar_property: str | None = None  # user property user.avatar.id, stored unvalidated (§1.4)


@dataclass
class Fault:
    status: int
    path: str = ""              # prefix of the request path it applies to
    method: str = ""
    remaining: int | None = None
    until: float | None = None  # time.monotonic() deadline
    retry_after: int | None = None


@dataclass
class JiraState:
    base_url: str = "http://localhost"
    version: str = "10.3.0"
    latency: float = 0.0
    gravatar: bool = False   # "Use Gravatar for user avatars": avatarUrls point at gravatar.com (§3)
    # Application access (§4.3): the groups each application role grants, and who is in which
    # group. Every user added joins DEFAULT_GROUP unless told otherwise.
    roles: dict = field(default_factory=lambda: {"jira-software": ["jira-software-users", "jira-administrators"]})
    groups: dict = field(default_factory=lambda: {"jira-software-users": set(), "jira-administrators": set()})
    roles_forbidden: bool = False  # the service account may not read application roles: 403
    member_lists: dict = field(default_factory=dict)  # group -> its members sorted by name (a cache)
    in_flight: dict = field(default_factory=dict)     # "METHOD endpoint" -> calls being answered now
    peak_in_flight: dict = field(default_factory=dict)
    arrivals: list = field(default_factory=list)      # time.monotonic() of each call's arrival, in order
    accounts: dict = field(default_factory=dict)      # username -> {"password", "admin"}
    tokens: dict = field(default_factory=dict)        # personal access token -> username
    users: dict = field(default_factory=dict)         # name -> User
    avatars: dict = field(default_factory=dict)       # id -> Avatar
    sessions: dict = field(default_factory=dict)      # JSESSIONID -> {"temp": (Image, filename) | None}
    failed_logins: dict = field(default_factory=dict)
    faults: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)        # "METHOD endpoint" -> n
    user_counts: dict = field(default_factory=dict)   # ("METHOD endpoint", username) -> n
    user_seconds: dict = field(default_factory=dict)  # username -> time spent inside "Jira"
    created: dict = field(default_factory=dict)       # owner key -> avatars ever created, deleted ones too
    next_id: int = 10500
    next_user: int = 10100
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self):
        for avatar_id in SYSTEM_AVATAR_IDS:
            self.avatars[avatar_id] = Avatar(avatar_id, None, Image.new("RGB", (48, 48), (128, 128, 128)))

    @property
    def major_minor(self) -> tuple[int, int]:
        parts = (self.version.split(".") + ["0"])[:2]
        return int(parts[0]), int(parts[1])

    # -- seeding and inspection (tests call these directly) -------------------------------

    def add_account(self, name: str, password: str = "", admin: bool = False, token: str | None = None):
        with self.lock:
            self.accounts[name] = {"password": password, "admin": admin}
            if token:
                self.tokens[token] = name
            if name not in self.users:
                self.add_user(name, groups=("jira-administrators",) if admin else (DEFAULT_GROUP,))

    def add_user(self, name: str, display_name: str | None = None, key: str | None = None,
                 groups=(DEFAULT_GROUP,), active: bool = True) -> User:
        """``groups``: the groups the user is in (created as needed); () for no application access."""
        with self.lock:
            if key is None:
                key = f"JIRAUSER{self.next_user}"
                self.next_user += 1
            user = User(name, key, display_name or name.title(), f"{name}@example.com", active=active)
            self.users[name] = user
            for group in groups:
                self.groups.setdefault(group, set()).add(name)
                self.member_lists.pop((group, True), None)
                self.member_lists.pop((group, False), None)
            return user

    def members(self, group: str, inactive: bool) -> list[User]:
        """The group's users by name (active ones unless ``inactive``); kept between calls, as a
        benchmark pages thousands."""
        with self.lock:
            if (group, inactive) not in self.member_lists:
                self.member_lists[(group, inactive)] = sorted(
                    (self.users[n] for n in self.groups[group]
                     if n in self.users and (inactive or self.users[n].active)),
                    key=lambda u: u.name)
            return self.member_lists[(group, inactive)]

    def peak(self, endpoint: str) -> int:
        """The most calls to ``endpoint`` ("GET /user"; "*": to any) that were being answered at once."""
        with self.lock:
            return self.peak_in_flight.get(endpoint, 0)

    def upload_as_user(self, name: str, png: bytes) -> str:
        """The user uploads and selects a picture of their own in the Jira UI."""
        with self.lock:
            avatar = self._create_avatar(self.users[name].key, Image.open(io.BytesIO(png)))
            self.users[name].avatar_property = avatar.id
            return avatar.id

    def selected_avatar(self, name: str) -> Avatar:
        """The avatar Jira shows for the user (falls back to the default, §1.5)."""
        with self.lock:
            prop = self.users[name].avatar_property
            return self.avatars.get(prop or "") or self.avatars[DEFAULT_AVATAR_ID]

    def custom_avatars(self, name: str) -> list[Avatar]:
        key = self.users[name].key
        return [a for a in self.avatars.values() if a.owner == key]

    def created_for(self, name: str) -> int:
        """Avatars ever created for the user. A request that created nothing (a crop-confirm
        whose body a killed client cut short answers 400) does not count."""
        return self.created.get(self.users[name].key, 0)

    def writes(self) -> int:
        return sum(n for k, n in self.counts.items() if not k.startswith("GET "))

    def count(self, endpoint: str, username: str | None = None) -> int:
        if username is not None:
            return self.user_counts.get((endpoint, username), 0)
        return self.counts.get(endpoint, 0)

    def inject(self, status: int, path: str = "", method: str = "", count: int | None = None,
               seconds: float | None = None, retry_after: int | None = None) -> None:
        with self.lock:
            self.faults.append(Fault(status, path, method.upper(), count,
                                     time.monotonic() + seconds if seconds else None, retry_after))

    def _create_avatar(self, owner: str, image: Image.Image, file_name: str = "avatar.png") -> Avatar:
        avatar_id = str(self.next_id)
        self.next_id += 1
        self.created[owner] = self.created.get(owner, 0) + 1
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        self.avatars[avatar_id] = Avatar(avatar_id, owner, image, file_name)
        return self.avatars[avatar_id]

    def avatar_urls(self, user: User) -> dict:
        if self.gravatar:  # Jira then shows Gravatar's picture, whatever avatar is selected
            digest = hashlib.md5(user.email.lower().encode()).hexdigest()
            return {f"{px}x{px}": f"https://www.gravatar.com/avatar/{digest}?d=mm&s={px}" for px in (48, 24, 16, 32)}
        avatar = self.selected_avatar(user.name)
        query = {"ownerId": avatar.owner, "avatarId": avatar.id} if avatar.owner else {"avatarId": avatar.id}
        base = f"{self.base_url}/secure/useravatar?"
        return {"48x48": base + urlencode(query),
                "24x24": base + urlencode({"size": "small", **query}),
                "16x16": base + urlencode({"size": "xsmall", **query}),
                "32x32": base + urlencode({"size": "medium", **query})}

    def user_bean(self, user: User) -> dict:
        return {"self": f"{self.base_url}/rest/api/2/user?username={user.name}", "key": user.key,
                "name": user.name, "emailAddress": user.email, "avatarUrls": self.avatar_urls(user),
                "displayName": user.display_name, "active": user.active, "deleted": False,
                "timeZone": "UTC", "locale": "en_US"}

    def avatar_bean(self, avatar: Avatar, selected_id: str | None = None) -> dict:
        query = {"ownerId": avatar.owner, "avatarId": avatar.id} if avatar.owner else {"avatarId": avatar.id}
        base = f"{self.base_url}/secure/useravatar?"
        bean = {"id": avatar.id, "owner": avatar.owner, "isSystemAvatar": avatar.owner is None,
                "isSelected": avatar.id == selected_id, "isDeletable": avatar.owner is not None,
                "urls": {"48x48": base + urlencode(query), "32x32": base + urlencode({"size": "medium", **query}),
                         "24x24": base + urlencode({"size": "small", **query}),
                         "16x16": base + urlencode({"size": "xsmall", **query})}}
        if self.major_minor >= (10, 0) and avatar.owner:
            bean["fileName"] = avatar.file_name
        return bean


def _error(status: int, *messages: str, headers: dict | None = None) -> Response:
    resp = jsonify({"errorMessages": list(messages), "errors": {}})
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


# --- the app ---------------------------------------------------------------------------

def create_emulator(state: JiraState | None = None) -> Flask:
    state = state or JiraState()
    app = Flask("jira_emulator")
    app.config["state"] = state
    api = Blueprint("api", __name__)

    @app.before_request
    def gatekeeper():
        path = request.path
        if path.startswith("/_emulator"):
            return None
        g.started = time.perf_counter()
        endpoint = _endpoint_name(path)
        with state.lock:
            state.arrivals.append(time.monotonic())
            key = g.in_flight_key = f"{request.method} {endpoint}"
            state.counts[key] = state.counts.get(key, 0) + 1
            state.in_flight[key] = state.in_flight.get(key, 0) + 1
            state.peak_in_flight[key] = max(state.peak_in_flight.get(key, 0), state.in_flight[key])
            state.peak_in_flight["*"] = max(state.peak_in_flight.get("*", 0), sum(state.in_flight.values()))
            per_user = (key, request.args.get("username"))
            state.user_counts[per_user] = state.user_counts.get(per_user, 0) + 1
        if state.latency:
            time.sleep(state.latency)
        denied = _authenticate(state)
        if denied is not None:
            return denied
        with state.lock:
            now = time.monotonic()
            state.faults = [f for f in state.faults if (f.remaining is None or f.remaining > 0)
                            and (f.until is None or f.until > now)]
            for fault in state.faults:
                if path.startswith(fault.path) and (not fault.method or fault.method == request.method):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                    if fault.status == 429:
                        headers.update({"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0",
                                        "X-RateLimit-FillRate": "5", "X-RateLimit-Interval-Seconds": "1"})
                    return _error(fault.status, "injected fault", headers=headers)
        g.session_id = request.cookies.get("JSESSIONID")
        with state.lock:
            if g.session_id not in state.sessions:
                g.session_id = secrets.token_hex(16)
                g.new_session = True
                state.sessions[g.session_id] = {"temp": None}
        return None

    @app.after_request
    def session_cookie(resp):
        if hasattr(g, "started"):
            name = request.args.get("username")
            with state.lock:
                state.user_seconds[name] = state.user_seconds.get(name, 0.0) + time.perf_counter() - g.started
        if getattr(g, "new_session", False):
            resp.set_cookie("JSESSIONID", g.session_id, httponly=True, path="/")
        return resp

    @app.teardown_request
    def landed(_exc):
        key = g.pop("in_flight_key", None)
        if key is not None:
            with state.lock:
                state.in_flight[key] -= 1

    def caller_may_edit(user: User) -> bool:
        caller = g.caller
        return state.accounts.get(caller, {}).get("admin", False) or caller == user.name

    def xsrf_ok() -> bool:
        return request.headers.get("X-Atlassian-Token", "").lower() == "no-check"

    def find_user(name):
        """Jira looks usernames up case-insensitively (it keeps a lower-cased copy)."""
        name = name or ""
        user = state.users.get(name)
        if user is None and name.lower() != name:
            user = next((u for u in state.users.values() if u.name.lower() == name.lower()), None)
        return user

    @api.get("/user")
    def get_user():
        username, key = request.args.get("username"), request.args.get("key")
        if username and key:
            return _error(400, "rest.user.error.too.many.params")
        with state.lock:
            user = find_user(username) if username else next((u for u in state.users.values() if u.key == key), None)
            if user is None:
                return _error(404, f"The user named '{username or key}' does not exist")
            return jsonify(state.user_bean(user))

    @api.get("/myself")
    def myself():
        with state.lock:
            return jsonify(state.user_bean(state.users[g.caller]))

    @api.get("/mypermissions")
    def mypermissions():
        admin = state.accounts.get(g.caller, {}).get("admin", False)
        wanted = [p for p in request.args.get("permissions", "ADMINISTER").split(",") if p]
        return jsonify({"permissions": {p: {"key": p, "havePermission": admin if p == "ADMINISTER" else True}
                                        for p in wanted}})

    @api.get("/serverInfo")
    def server_info():
        return jsonify({"baseUrl": state.base_url, "version": state.version, "deploymentType": "Server",
                        "versionNumbers": [int(x) for x in state.version.split(".")]})

    @api.get("/user/avatars")
    def all_avatars():
        with state.lock:
            user = find_user(request.args.get("username"))
            if user is None:
                return _error(404, "user not found")
            selected = state.selected_avatar(user.name).id
            return jsonify({"system": [state.avatar_bean(state.avatars[i], selected) for i in SYSTEM_AVATAR_IDS],
                            "custom": [state.avatar_bean(a, selected) for a in state.custom_avatars(user.name)]})

    @api.post("/user/avatar/temporary")
    def store_temporary():
        if not xsrf_ok():
            return _error(403, "XSRF check failed")
        with state.lock:
            user = find_user(request.args.get("username"))
        if user is None:
            return _error(404, f"The user named '{request.args.get('username')}' does not exist")
        if not caller_may_edit(user):
            return _error(403)
        if not (request.args.get("filename") or "").strip():
            return _error(400)
        ctype = (request.headers.get("Content-Type") or "application/octet-stream").split(";")[0].strip().lower()
        if ctype.startswith("multipart/"):
            return _error(400, "emulator: the multipart variant is not modelled; use the raw body")
        if ctype not in CONTENT_TYPES:
            reason = "no.ext.failure" if "." not in request.args["filename"] else "contenttype.failure"
            return _error(400, f"avatarpicker.upload.{reason}")
        size = request.args.get("size")
        if size is None and request.content_length is None:
            return _error(400, "attachfile.error.io.size")  # chunked without size (§1.2)
        body = request.get_data()
        expected = int(size) if size is not None else request.content_length
        if expected > ATTACHMENT_SIZE:
            return _error(400, "avatarpicker.upload.size.toobig")
        if not body:
            return _error(400, "avatarpicker.upload.size.zero")
        if len(body) != expected:
            return _error(400, "avatarpicker.upload.size.wrong")
        try:
            image = Image.open(io.BytesIO(body), formats=["JPEG", "PNG", "GIF"])
            if image.size[0] * image.size[1] > MAX_MEGAPIXELS * 1_000_000:
                return _error(400, "avatarpicker.upload.too.big")
            image.load()
        except Exception:  # noqa: BLE001
            return _error(400, "avatarpicker.upload.image.corrupted")
        if max(image.size) > MAX_TEMP_SIDE:
            image.thumbnail((MAX_TEMP_SIDE, MAX_TEMP_SIDE), Image.Resampling.LANCZOS)
        w, h = image.size
        with state.lock:
            filename = request.args["filename"]
            if w <= 48 and h == w:  # no cropping needed: the avatar is created at once (§1.2)
                avatar = state._create_avatar(user.key, image, filename)
                return jsonify(state.avatar_bean(avatar)), 201
            state.sessions[g.session_id]["temp"] = (image, filename)
        side = min(w, h)
        return jsonify({"cropperWidth": 48 + (side - 48) // 3, "cropperOffsetX": (w - 48) // 5,
                        "cropperOffsetY": (h - 48) // 5, "needsCropping": True,
                        "url": f"{state.base_url}/secure/temporaryavatar?cropped=true"
                               f"&magic={int(time.time() * 1000)}"}), 201

    @api.post("/user/avatar")
    def confirm():
        if not xsrf_ok():
            return _error(403, "XSRF check failed")
        with state.lock:
            user = find_user(request.args.get("username"))
        if user is None:
            return _error(404, "user not found")
        if not caller_may_edit(user):
            return _error(403)
        try:
            crop = json.loads(request.get_data() or b"{}")
            x, y, width = int(crop["cropperOffsetX"]), int(crop["cropperOffsetY"]), int(crop["cropperWidth"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "avatarpicker.upload.failure")
        if not (0 <= x <= MAX_TEMP_SIDE - 48 and 0 <= y <= MAX_TEMP_SIDE - 48):
            return _error(400, "avatarpicker.upload.failure")
        with state.lock:
            temp = state.sessions.get(g.session_id, {}).get("temp")
            if temp is None:  # other session, other node, or already confirmed (§1.3)
                return _error(500, "avatarpicker.upload.failure")
            image, filename = temp
            if width < 1 or x + width > image.size[0] or y + width > image.size[1]:
                return _error(400, "emulator: crop square outside the temporary image")
            state.sessions[g.session_id]["temp"] = None
            avatar = state._create_avatar(user.key, image.crop((x, y, x + width, y + width)), filename)
            return jsonify(state.avatar_bean(avatar)), 201

    @api.put("/user/avatar")
    def select():
        with state.lock:
            user = find_user(request.args.get("username"))
            if user is None:
                return _error(404, "user not found")
            if not caller_may_edit(user):
                return _error(401)
            try:
                avatar_id = str(json.loads(request.get_data() or b"{}").get("id", ""))
            except (ValueError, AttributeError):
                return _error(400, "bad body")
            # Stored as given, no validation (§1.4); unparsable means the default avatar.
            user.avatar_property = avatar_id if avatar_id.isdigit() else None
            if state.major_minor >= (10, 0):  # newer versions document "Returns updated avatar"
                avatar = state.avatars.get(avatar_id)
                return jsonify(state.avatar_bean(avatar, avatar_id) if avatar else {"id": avatar_id}), 200
            return Response(status=204)

    @api.delete("/user/avatar/<avatar_id>")
    def delete(avatar_id):
        with state.lock:
            user = find_user(request.args.get("username"))
            if user is None:
                return _error(404, "user not found")
            avatar = state.avatars.get(avatar_id)
            if avatar is None:
                return _error(404, "avatar not found")
            owner = next((u for u in state.users.values() if u.key == avatar.owner), None)
            if owner is None or not caller_may_edit(owner):  # system avatars have no owner
                return _error(401)
            del state.avatars[avatar_id]
            return Response(status=204)

    @api.get("/user/search")
    def search():
        """Users whose name, e-mail address or a word of whose display name starts with the
        query ("." matches everyone), active ones unless asked; at most the version's cap in
        all, whatever startAt says (§4.1)."""
        query = (request.args.get("username") or "").lower()
        start, maximum = int(request.args.get("startAt", 0)), int(request.args.get("maxResults", 50))
        inactive = request.args.get("includeInactive", "false").lower() == "true"
        active = request.args.get("includeActive", "true").lower() == "true"
        cap = 100 if state.major_minor >= (10, 0) else 1000  # §4.1

        def matches(u: User) -> bool:
            words = [u.name.lower(), u.email.lower(), *u.display_name.lower().split()]
            return query == "." or any(w.startswith(query) for w in words)
        with state.lock:
            found = [u for u in sorted(state.users.values(), key=lambda u: u.name)
                     if matches(u) and (u.active and active or not u.active and inactive)]
            found = found[:cap]
            return jsonify([state.user_bean(u) for u in found[start:start + min(maximum, cap)]])

    @api.get("/applicationrole")
    def application_roles():
        """The application roles and the groups that grant each (Jira 7+); admins only."""
        if state.roles_forbidden or not state.accounts.get(g.caller, {}).get("admin", False):
            return _error(403, "You are not authorized to perform this operation.")
        with state.lock:
            return jsonify([{"key": key, "name": key.replace("-", " ").title(), "groups": sorted(groups),
                             "defaultGroups": sorted(groups)[:1], "selectedByDefault": False, "defined": True,
                             "numberOfSeats": -1, "remainingSeats": -1, "userCount": len(state.users),
                             "userCountDescription": "users", "hasUnlimitedSeats": True, "platform": False}
                            for key, groups in state.roles.items()])

    @api.get("/group/member")
    def group_member():
        """A group's members, 50 a page at most, by name; ``total`` on every page (§4.3)."""
        name = request.args.get("groupname", "")
        start = int(request.args.get("startAt", 0))
        maximum = min(int(request.args.get("maxResults", GROUP_PAGE)), GROUP_PAGE)
        inactive = request.args.get("includeInactiveUsers", "false").lower() == "true"
        with state.lock:
            if name not in state.groups:
                return _error(404, f"Group with name '{name}' does not exist")
            members = state.members(name, inactive)
            page = members[start:start + maximum]
            last = start + maximum >= len(members)
            body = {"self": request.url, "maxResults": maximum, "startAt": start, "total": len(members),
                    "isLast": last, "values": [state.user_bean(u) for u in page]}
            if not last:
                body["nextPage"] = (f"{state.base_url}/rest/api/2/group/member?" + urlencode(
                    {"groupname": name, "includeInactiveUsers": str(inactive).lower(), "startAt": start + maximum,
                     "maxResults": maximum}))
            return jsonify(body)

    @api.get("/user/list")
    def user_list():
        if state.major_minor < (10, 3):
            return _error(404, "null for uri")
        cursor = request.args.get("cursor") or "0"
        maximum = int(request.args.get("maxResults", 2000))
        start = int(cursor) if cursor.isdigit() else 0
        with state.lock:
            users = sorted(state.users.values(), key=lambda u: u.key)
            page = users[start:start + maximum]
            last = start + maximum >= len(users)
            body = {"self": request.url, "maxResults": maximum, "isLast": last,
                    "values": [state.user_bean(u) for u in page]}
            if not last:
                body["nextCursor"] = str(start + maximum)
                body["nextPage"] = (f"{state.base_url}/rest/api/2/user/list"
                                    f"?cursor={start + maximum}&maxResults={maximum}")
            return jsonify(body)

    app.register_blueprint(api, url_prefix="/rest/api/2")
    app.register_blueprint(api, url_prefix="/rest/api/latest", name="api_latest")

    @app.get("/secure/useravatar")
    def useravatar():
        with state.lock:
            avatar = state.avatars.get(request.args.get("avatarId", "")) or state.avatars[DEFAULT_AVATAR_ID]
            image = avatar.image
        side = SIZES.get(request.args.get("size", "large"), 48)
        image = image.resize((side, side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "PNG")
        return Response(out.getvalue(), mimetype="image/png")

    control(app, state)
    return app


def _endpoint_name(path: str) -> str:
    for prefix in ("/rest/api/2", "/rest/api/latest"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    if path.startswith("/user/avatar/") and path != "/user/avatar/temporary":
        return "/user/avatar/{id}"
    return path


def _authenticate(state: JiraState) -> Response | None:
    """Pre-emptive Basic or Bearer auth; Seraph's failed-login counter and CAPTCHA (§6)."""
    header = request.headers.get("Authorization", "")
    g.caller = None
    if header.startswith("Bearer "):
        with state.lock:
            g.caller = state.tokens.get(header[7:].strip())
        if g.caller is None:
            return _error(401, "invalid token")
    elif header.startswith("Basic "):
        try:
            # ISO-8859-1, as Jira decodes Basic credentials (JRASERVER-59828: others fail)
            name, _, password = base64.b64decode(header[6:]).decode("latin-1").partition(":")
        except (ValueError, UnicodeDecodeError):
            return _error(401, "bad header")
        with state.lock:
            if state.failed_logins.get(name, 0) >= CAPTCHA_AFTER:
                return _error(403, "CAPTCHA required", headers={
                    "X-Seraph-LoginReason": "AUTHENTICATION_DENIED",
                    "X-Authentication-Denied-Reason": f"CAPTCHA_CHALLENGE; login-url={state.base_url}/login.jsp"})
            account = state.accounts.get(name)
            if account is None or not secrets.compare_digest(account["password"].encode(), password.encode()):
                state.failed_logins[name] = state.failed_logins.get(name, 0) + 1
                return _error(401, "login failed", headers={"X-Seraph-LoginReason": "AUTHENTICATED_FAILED"})
            state.failed_logins[name] = 0
            g.caller = name
    if g.caller is None and request.path != "/secure/useravatar":
        return _error(401, "You are not authenticated. Authentication required to perform this operation.")
    return None


def control(app: Flask, state: JiraState) -> None:
    """/_emulator/...: seed users, inject faults and latency, look at what Jira holds."""

    @app.post("/_emulator/users")
    def c_users():
        for u in request.get_json():
            state.add_user(u["name"], u.get("displayName"))
        return jsonify({"users": len(state.users)})

    @app.post("/_emulator/faults")
    def c_faults():
        f = request.get_json()
        state.inject(int(f["status"]), f.get("path", ""), f.get("method", ""), f.get("count"),
                     f.get("seconds"), f.get("retry_after"))
        return jsonify({"faults": len(state.faults)})

    @app.post("/_emulator/latency")
    def c_latency():
        state.latency = float(request.get_json()["seconds"])
        return jsonify({"latency": state.latency})

    @app.get("/_emulator/stats")
    def c_stats():
        with state.lock:
            return jsonify({"writes": state.writes(), "counts": state.counts})

    @app.get("/_emulator/users/<name>")
    def c_user(name):
        with state.lock:
            user = state.users.get(name)
            if user is None:
                return _error(404, "no such user")
            avatar = state.selected_avatar(name)
            return jsonify({"name": name, "key": user.key, "selected": avatar.id,
                            "custom": [a.id for a in state.custom_avatars(name)]})

    @app.get("/_emulator/avatars/<avatar_id>.png")
    def c_avatar(avatar_id):
        avatar = state.avatars.get(avatar_id)
        return Response(avatar.png, mimetype="image/png") if avatar else _error(404, "no such avatar")


class EmulatorServer:
    """The emulator on a loopback port, in background threads, one per connection.

    Connections are kept alive, as Jira's Tomcat keeps them (werkzeug's dev server closes each
    one, and clients would pay a TCP handshake per call they never pay against the real thing),
    and the server is lean (tests/rig/keepalive_server.py says why).
    """

    def __init__(self, state: JiraState | None = None, host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[str, str] | None = None):
        """``tls``: (certificate file, key file) to serve HTTPS at https://localhost:port."""
        self.state = state or JiraState()
        self.app = create_emulator(self.state)
        self.tls = tls
        # not port 0: that is in the kernel's ephemeral range, where, while go_down() lasts, a
        # client's socket can take the port that come_back() must bind again
        self._bind(host, port or free_port())  # so the port is known now
        port = self.server.server_address[1]
        self.url = f"https://localhost:{port}" if tls else f"http://{host}:{port}"
        self.state.base_url = self.url

    def _bind(self, host: str, port: int) -> None:
        self.server = KeepAliveServer((host, port), self.app, self.tls)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="jira-emulator",
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()

    def go_down(self) -> None:
        """Jira is down: the port refuses connections until come_back()."""
        self.server.stop()

    def come_back(self) -> None:
        """Serve again on the same port, with the same state."""
        host, port = self.server.server_address[:2]
        self._bind(str(host), int(port))
        self.thread.start()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--version", default="10.3.0", help="Jira version to behave like (9.12.0, 10.3.0, 11.0.0)")
    parser.add_argument("--admin", default="admin:admin", help="service account USER:PASSWORD (a Jira admin)")
    parser.add_argument("--token", help="also accept this personal access token for the admin")
    parser.add_argument("--users", default="", help="comma-separated usernames, or a number N for user1..userN")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    args = parser.parse_args(argv)
    state = JiraState(version=args.version, latency=args.latency)
    name, _, password = args.admin.partition(":")
    state.add_account(name, password, admin=True, token=args.token)
    names = ([f"user{i}" for i in range(1, int(args.users) + 1)] if args.users.isdigit()
             else [u.strip() for u in args.users.split(",") if u.strip()])
    for n in names:
        state.add_user(n)
    server = EmulatorServer(state, args.host, args.port)
    print(f"Jira {args.version} emulator on {server.url} (admin {name!r}, {len(state.users)} users)", flush=True)
    try:
        server.server.serve_forever()
    except KeyboardInterrupt:
        server.server.server_close()


if __name__ == "__main__":
    main()
