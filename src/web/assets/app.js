// pytest-mcp pages: the few live parts. Served from /assets/app.js (no inline
// script: the pages run under a strict Content-Security-Policy). Every piece
// of HTML inserted here was rendered, and escaped, by the server.
"use strict";

// Copy buttons: data-copy holds the text (a rerun command).
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  event.preventDefault();
  const text = button.getAttribute("data-copy");
  try {
    await navigator.clipboard.writeText(text);
    flash(button, "copied");
  } catch (_) {
    // No clipboard (an insecure origin): select the text for Ctrl+C instead.
    const field = document.createElement("textarea");
    field.value = text;
    document.body.appendChild(field);
    field.select();
    const ok = document.execCommand("copy");
    field.remove();
    flash(button, ok ? "copied" : "press Ctrl+C");
  }
});

function flash(button, label) {
  const before = button.textContent;
  button.textContent = label;
  setTimeout(() => (button.textContent = before), 1500);
}

// Sortable tables: click a header with data-sort to sort by that column.
document.addEventListener("click", (event) => {
  const header = event.target.closest("th[data-sort]");
  if (!header) return;
  const table = header.closest("table");
  const body = table.tBodies[0];
  const column = Array.from(header.parentNode.children).indexOf(header);
  const numeric = header.getAttribute("data-sort") === "number";
  const descending = header.getAttribute("aria-sort") !== "descending";
  for (const th of header.parentNode.children) th.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  const key = (row) => {
    const cell = row.children[column];
    const value = cell.getAttribute("data-value") ?? cell.textContent.trim();
    return numeric ? parseFloat(value) || 0 : value.toLowerCase();
  };
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    const order = x < y ? -1 : x > y ? 1 : 0;
    return descending ? -order : order;
  });
  for (const row of rows) body.appendChild(row);
});

// A running session: counts, progress and new failures arrive over
// Server-Sent Events. The browser resumes after a reconnect with
// Last-Event-ID (the last outcome seq it has), so nothing is missed or
// shown twice.
const live = document.querySelector("[data-live-session]");
if (live) {
  const url = live.getAttribute("data-live-session");
  const after = live.getAttribute("data-after") || "0";
  const source = new EventSource(`${url}?after=${encodeURIComponent(after)}`);
  const apply = (event) => {
    const update = JSON.parse(event.data);
    for (const [name, value] of Object.entries(update.text)) {
      for (const node of document.querySelectorAll(`[data-field="${name}"]`)) {
        node.textContent = value;
      }
    }
    const bar = document.querySelector("[data-field=bar]");
    if (bar && update.bar) bar.outerHTML = update.bar;
    if (update.failures) {
      const list = document.getElementById("failures");
      list.querySelector(".empty")?.remove();
      list.insertAdjacentHTML("beforeend", update.failures);
    }
    if (update.rerun !== undefined) {
      for (const node of document.querySelectorAll("[data-field=rerun-all]")) {
        node.setAttribute("data-copy", update.rerun);
        node.hidden = update.rerun === "";
      }
    }
    for (const node of document.querySelectorAll("[data-field=status]")) {
      node.className = `status ${update.text.status}`;
    }
    for (const node of document.querySelectorAll("[data-field=result]")) {
      node.className = `status ${update.text.result.replace(" ", "-")}`;
      node.title = `status ${update.text.status}`;
    }
  };
  source.addEventListener("progress", apply);
  source.addEventListener("end", (event) => {
    apply(event);
    source.close();
    live.removeAttribute("data-live-session");
  });
}

// A project switcher submits its form as soon as a project is chosen.
document.addEventListener("change", (event) => {
  const select = event.target.closest("select[data-autosubmit]");
  if (select && select.form) select.form.submit();
});

// The sessions list: refetch the table when something changes.
const list = document.querySelector("[data-live-list]");
if (list) {
  const source = new EventSource(list.getAttribute("data-live-list"));
  let pending = false;
  source.addEventListener("changed", async () => {
    if (pending) return;
    pending = true;
    try {
      const reply = await fetch(window.location.href, { headers: { "Accept": "text/html" } });
      if (reply.ok) {
        const page = new DOMParser().parseFromString(await reply.text(), "text/html");
        const fresh = page.querySelector("[data-live-list] tbody");
        if (fresh) list.querySelector("tbody").replaceWith(fresh);
      }
    } finally {
      pending = false;
    }
  });
}
