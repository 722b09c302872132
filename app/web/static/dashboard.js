// The dashboard: redraws from GET admin/dashboard.json every few seconds; the buttons call
// the admin API with the header that proves the request comes from this page (no form can
// send it). Every value is put into the page as text, never as HTML: usernames and reasons
// come from the directory and from Jira.
"use strict";
(function () {
  const REFRESH_MS = 3000;
  const csrfHeader = document.querySelector('meta[name="csrf-header"]').content;
  const $ = (id) => document.getElementById(id);
  let problemsOf = null;   // [sweep id, done] the problems list was read for
  let problems = [];
  let runningSweep = null;

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    Object.assign(node, props || {});
    for (const child of children) node.append(child === null || child === undefined ? "" : child);
    return node;
  }

  async function api(method, url, body) {
    const options = {method, credentials: "same-origin", headers: {[csrfHeader]: "1"}};
    if (method !== "GET") {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body || {});
    }
    const response = await fetch(url, options);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return {status: response.status, data};
  }

  function say(text) { $("answer").textContent = text; }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString();
  }

  function thumbnail(username, version) {
    return el("img", {className: "thumb", alt: "", loading: "lazy",
      src: "admin/users/" + encodeURIComponent(username) + "/avatar.png?v=" + encodeURIComponent(version || "")});
  }

  function preview(username) {
    // the picture the next sync would upload, rendered by the service (nothing is written)
    const img = el("img", {className: "thumb", alt: "", loading: "lazy", title: "what the next sync would upload",
      src: "admin/users/" + encodeURIComponent(username) + "/preview.png?at=" + Date.now()});
    img.addEventListener("error", () => { img.hidden = true; });  // no photo, or not an image
    return img;
  }

  function drawChecks(data) {
    $("status").textContent = data.status;
    $("disabled").hidden = !data.disabled;
    $("unavailable").hidden = data.status !== "unavailable";
    const list = $("checks");
    list.replaceChildren();
    for (const [name, check] of Object.entries(data.checks || {})) {
      const light = el("span", {className: "light " + check.status, title: check.status});
      const detail = check.status === "ok" ? "" : " since " + when(check.since) + (check.reason ? ": " + check.reason : "");
      list.append(el("li", {className: "check", title: check.reason || ""}, light, name + " " + check.status + detail));
    }
    if (data.disabled) list.append(el("li", {}, el("span", {className: "light disabled"}), "synchronisation disabled"));
  }

  function drawQueue(queue, loginWait) {
    for (const state of ["pending", "running", "failed"]) $("q-" + state).textContent = (queue || {})[state] || 0;
    // a minute unclaimed: no worker takes the logins (see the AvatarSyncLoginsNotPickedUp alert)
    $("q-wait").hidden = !(loginWait >= 60);
    $("q-wait-seconds").textContent = loginWait || 0;
  }

  function drawSweep(sweep) {
    runningSweep = sweep && sweep.status === "running" ? sweep : null;
    $("cancel-sweep").hidden = !runningSweep;
    $("start-sweep").disabled = $("start-dry-run").disabled = !!runningSweep;
    if (!sweep) { $("sweep").hidden = true; return; }
    $("sweep").hidden = false;
    $("sweep-title").textContent = "Sweep " + sweep.id + (sweep.dry_run ? " (dry run)" : "") + ", started " + when(sweep.started_at);
    $("sweep-status").textContent = sweep.status + (sweep.status === "running" ? " · " + sweep.phase : "");
    $("sweep-status").className = "pill " + sweep.status;
    const progress = $("sweep-progress");
    progress.max = Math.max(sweep.total, 1);
    progress.value = sweep.total ? sweep.done : (sweep.status === "running" ? 0 : 1);
    const percent = sweep.total ? Math.floor(100 * sweep.done / sweep.total) : (sweep.status === "running" ? 0 : 100);
    $("sweep-percent").textContent = percent + " %";
    $("sweep-figures").textContent = sweep.done + " of " + sweep.total + " users · " + sweep.rate_per_second + " users/s" +
      (sweep.eta_seconds !== null && sweep.eta_seconds !== undefined ? " · about " + sweep.eta_seconds + " s left" : "") +
      (sweep.error ? " · " + sweep.error : "");
    $("sweep-counts").textContent = Object.entries(sweep.counts || {}).map(([o, n]) => o + " " + n).join(" · ");
    for (const [id, format] of [["problems-csv", "csv"], ["problems-json", "json"]]) {
      $(id).href = "admin/sweeps/" + sweep.id + "/problems." + format;
      $(id).hidden = false;
    }
    const key = sweep.id + ":" + sweep.done + ":" + sweep.status;
    if (problemsOf !== key) {
      problemsOf = key;
      api("GET", "admin/sweeps/" + sweep.id + "?limit=1000").then((r) => {
        if (r.status === 200) { problems = r.data.problems || []; drawProblems(); }
      });
    }
  }

  function drawProblems() {
    const filter = $("problem-filter").value.trim().toLowerCase();
    const shown = problems.filter((p) => !filter ||
      [p.username, p.outcome, p.reason, p.directory].some((v) => (v || "").toLowerCase().includes(filter)));
    $("problems").tBodies[0].replaceChildren(...shown.map((p) => el("tr", {className: "problem"},
      el("td", {}, p.username), el("td", {className: "outcome-" + p.outcome}, p.outcome),
      el("td", {}, p.reason || ""), el("td", {}, p.directory || ""))));
    $("problems-none").hidden = shown.length > 0;
  }

  function drawRecent(recent) {
    $("recent").tBodies[0].replaceChildren(...(recent || []).map((r) => el("tr", {},
      el("td", {}, thumbnail(r.username, r.avatar_id)), el("td", {}, r.username),
      el("td", {className: "outcome-" + r.outcome}, r.outcome), el("td", {}, when(r.at)),
      el("td", {className: "num"}, r.duration_ms === null ? "" : r.duration_ms + " ms"),
      el("td", {}, r.source || ""), el("td", {}, r.reason || ""))));
  }

  async function refresh() {
    if (document.hidden) return;
    const r = await api("GET", "admin/dashboard.json");
    if (r.status !== 200 || !r.data) { $("status").textContent = "cannot read the service (" + r.status + ")"; return; }
    const data = r.data;
    drawChecks(data);
    drawQueue(data.queue, data.login_wait);
    drawSweep(data.sweep);
    drawRecent(data.recent);
    $("next-sweep").textContent = data.next_sweep ? when(data.next_sweep) : "none (no sweep.schedule)";
  }

  async function startSweep(dryRun) {
    const r = await api("POST", "admin/sweeps", {dry_run: dryRun, full: $("full").checked});
    say(r.status === 202 ? "sweep " + r.data.id + " started" + (dryRun ? " (dry run)" : "")
      : "could not start a sweep: " + ((r.data && r.data.error) || r.status));
    refresh();
  }

  async function syncUser(username, force) {
    say("syncing " + username + " …");
    const r = await api("POST", "admin/users/" + encodeURIComponent(username) + "/sync", {force});
    say(r.status === 200 ? username + ": " + r.data.outcome + (r.data.reason ? " (" + r.data.reason + ")" : "")
      : username + ": " + ((r.data && r.data.error) || r.status));
    search();
    refresh();
  }

  async function setExclusion(username, excluded) {
    const r = await api("PUT", "admin/users/" + encodeURIComponent(username) + "/exclusion", {excluded});
    const why = r.status === 200 ? r.data.exclusion.reason : null;
    say(r.status === 200 ? username + ": " + (why ? "excluded (" + why + ")" : "not excluded")
      : username + ": " + ((r.data && r.data.error) || r.status));
    search();
  }

  async function search() {
    const name = $("search-name").value.trim();
    if (!name) return;
    const r = await api("GET", "admin/users?search=" + encodeURIComponent(name));
    const users = r.status === 200 ? r.data.users : [];
    $("users").tBodies[0].replaceChildren(...users.map((u) => {
      const s = u.state || {};
      const syncNow = el("button", {type: "button", textContent: "sync now"});
      const force = el("button", {type: "button", textContent: "force"});
      const exclude = el("button", {type: "button", className: "exclusion",
        textContent: s.excluded ? "include again" : "exclude"});
      syncNow.addEventListener("click", () => syncUser(u.username, false));
      force.addEventListener("click", () => syncUser(u.username, true));
      exclude.addEventListener("click", () => setExclusion(u.username, !s.excluded));
      return el("tr", {className: "user"}, el("td", {}, thumbnail(u.username, s.avatar_id)),
        el("td", {}, preview(u.username)), el("td", {}, u.username),
        el("td", {className: "outcome-" + s.last_outcome}, (s.last_outcome || "") + (s.last_attempt_at ? " · " + when(s.last_attempt_at) : "")),
        el("td", {}, s.last_error || ""),
        el("td", {}, u.queue ? u.queue.state + " (" + u.queue.source + ", attempt " + u.queue.attempts + ")" : ""),
        el("td", {className: "excluded"}, s.excluded ? "opted out" : ""),
        el("td", {}, syncNow, " ", force, " ", exclude));
    }));
    $("users-none").hidden = users.length > 0;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("start-sweep").addEventListener("click", () => startSweep(false));
    $("start-dry-run").addEventListener("click", () => startSweep(true));
    $("cancel-sweep").addEventListener("click", async () => {
      if (!runningSweep) return;
      const r = await api("POST", "admin/sweeps/" + runningSweep.id + "/cancel");
      say(r.status === 200 ? "sweep " + runningSweep.id + " cancelled" : "could not cancel: " + ((r.data && r.data.error) || r.status));
      refresh();
    });
    $("problem-filter").addEventListener("input", drawProblems);
    $("search").addEventListener("submit", (e) => { e.preventDefault(); search(); });
    $("sync-unknown").addEventListener("click", () => syncUser($("search-name").value.trim(), false));
    document.addEventListener("visibilitychange", refresh);
    refresh();
    setInterval(refresh, REFRESH_MS);
  });
})();
