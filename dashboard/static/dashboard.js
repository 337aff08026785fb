// memotune dashboard: sortable tables, trial highlighting, live reload, verify status.
(function () {
  "use strict";
  const body = document.body;

  // --- sortable tables: click a header; the order is kept in the URL hash
  function cellValue(row, i, type) {
    const td = row.children[i];
    const raw = td ? (td.dataset.v ?? td.textContent.trim()) : "";
    if (type === "str") return raw.toLowerCase();
    const num = parseFloat(raw);
    if (raw !== "" && !isNaN(num) && isFinite(num)) return num;
    return type === "num" ? -Infinity : raw.toLowerCase();
  }
  function sortTable(table, i, dir) {
    const th = table.tHead.rows[0].children[i];
    const type = th.dataset.type || "auto";
    const tbody = table.tBodies[0];
    const rows = Array.from(tbody.rows);
    rows.sort((a, b) => {
      const x = cellValue(a, i, type), y = cellValue(b, i, type);
      if (typeof x === "number" && typeof y === "number") return dir * (x - y);
      return dir * String(x).localeCompare(String(y), undefined, { numeric: true });
    });
    rows.forEach(r => tbody.appendChild(r));
    Array.from(table.tHead.rows[0].children).forEach(h => h.classList.remove("asc", "desc"));
    th.classList.add(dir > 0 ? "asc" : "desc");
  }
  function saveSort(id, i, dir) {
    const params = new URLSearchParams(location.hash.slice(1));
    params.set(id, `${i}:${dir}`);
    history.replaceState(null, "", "#" + params.toString());
  }
  document.querySelectorAll("table.sortable").forEach(table => {
    Array.from(table.tHead.rows[0].children).forEach((th, i) => {
      if (!th.dataset.type) return;
      th.addEventListener("click", () => {
        const dir = th.classList.contains("asc") ? -1 : 1;
        sortTable(table, i, dir);
        if (table.id) saveSort(table.id, i, dir);
      });
    });
    const saved = new URLSearchParams(location.hash.slice(1)).get(table.id);
    if (saved) {
      const [i, dir] = saved.split(":").map(Number);
      if (table.tHead.rows[0].children[i]) sortTable(table, i, dir || 1);
    }
  });

  // --- hover a trial (table row or plot point): highlight its path in the reuse tree
  function highlight(trial, on) {
    document.querySelectorAll(`.tree .t${trial}`).forEach(el => el.classList.toggle("hl", on));
    document.querySelectorAll(`tr.trial[data-trial="${trial}"]`).forEach(el => el.classList.toggle("hl", on));
  }
  document.querySelectorAll("tr.trial, .plot .pt").forEach(el => {
    const t = el.dataset.trial;
    el.addEventListener("mouseenter", () => highlight(t, true));
    el.addEventListener("mouseleave", () => highlight(t, false));
  });

  // --- live: poll the store's fingerprint; reload when a run, study or entry changed
  const fp = body.dataset.fingerprint;
  const poll = parseInt(body.dataset.pollMs || "5000", 10);
  const live = document.getElementById("live");
  if (fp !== undefined && poll > 0) {
    setInterval(async () => {
      try {
        const r = await fetch("/api/fingerprint", { cache: "no-store" });
        const j = await r.json();
        if (j.fingerprint && fp && j.fingerprint !== fp) location.reload();
        if (live) live.title = "checked the store at " + new Date().toLocaleTimeString();
      } catch (e) { /* the dashboard was stopped: keep the page */ }
    }, poll);
  }

  // --- cache page: verify status, filled in when the background check ends
  const status = document.getElementById("verify-status");
  const button = document.getElementById("verify-now");
  function showVerify(s) {
    status.dataset.state = s.state;
    if (s.state === "running") { status.textContent = "checking…"; return; }
    if (s.error) { status.textContent = "failed: " + s.error; return; }
    if (s.state !== "done") { status.textContent = "not checked"; return; }
    const damaged = Object.keys(s.damaged || {});
    status.textContent = `${s.checked} checked, ${damaged.length} damaged`;
    document.querySelectorAll("td.verify").forEach(td => {
      const key = td.dataset.key;
      if (damaged.includes(key)) {
        td.innerHTML = '<span class="bad">damaged</span>';
        td.title = (s.damaged[key] || []).join("; ");
        td.dataset.v = "damaged";
      } else if ((s.sound || []).includes(key)) {
        td.innerHTML = '<span class="ok">ok</span>';
        td.dataset.v = "ok";
      }
    });
  }
  async function watchVerify() {
    const r = await fetch("/api/verify", { cache: "no-store" });
    const s = await r.json();
    showVerify(s);
    if (s.state === "running") setTimeout(watchVerify, 700);
  }
  if (status) {
    if (status.dataset.state === "running") watchVerify();
    if (button) button.addEventListener("click", async () => {
      const r = await fetch("/api/verify", { method: "POST" });
      showVerify(await r.json());
      setTimeout(watchVerify, 300);
    });
  }
})();
