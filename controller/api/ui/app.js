// tenantnet's live topology page: hosts, networks with the hosts they span, ports per host.
// Only the public API (the Neutron resources and /tenantnet/status), polled every REFRESH_MS.
// Every value from the API goes into the page as text (textContent), never as markup: names
// and descriptions are whatever the orchestrator's users typed.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "tenantnet-token";

class AuthNeeded extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function get(path) {
  const headers = { Accept: "application/json" };
  if (token()) headers["X-Auth-Token"] = token();
  const response = await fetch(path, { headers, credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) throw new AuthNeeded();
  if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
  return response.json();
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.append(cell instanceof Node ? wrap(cell) : el("td", cell ?? "-"));
  return tr;
}

function wrap(node) {
  const td = document.createElement("td");
  td.append(node);
  return td;
}

function badge(text) {
  return el("span", text, `badge ${text}`);
}

function byName(a, b) {
  return String(a.name || a.id).localeCompare(String(b.name || b.id));
}

function render(hosts, networks, ports, status) {
  const live = status.hosts || {};
  const netById = new Map(networks.map((n) => [n.id, n]));
  const portsByHost = new Map(hosts.map((h) => [h.id, []]));
  const unbound = [];
  const spans = new Map(networks.map((n) => [n.id, new Set()]));
  for (const p of ports) {
    const host = p["binding:host_id"];
    if (host && portsByHost.has(host)) {
      portsByHost.get(host).push(p);
      if (spans.has(p.network_id)) spans.get(p.network_id).add(host);
    } else {
      unbound.push(p);
    }
  }

  const hostRows = hosts.slice().sort(byName).map((h) => {
    const tr = row([
      h.id,
      badge(h.status),
      h.tunnel_ip,
      live[h.id]?.flows,
      live[h.id]?.groups,
      portsByHost.get(h.id).length,
    ]);
    tr.dataset.host = h.id;
    return tr;
  });
  document.querySelector("#hosts tbody").replaceChildren(...hostRows);

  const netRows = networks.slice().sort(byName).map((n) => {
    const members = [...spans.get(n.id)].sort();
    const tunnels = [];
    for (let i = 0; i < members.length; i++) {
      for (let j = i + 1; j < members.length; j++) tunnels.push(`${members[i]}\u2013${members[j]}`);
    }
    const tr = row([
      n.name || n.id,
      n["provider:network_type"],
      n["provider:segmentation_id"],
      members.join(", ") || "none",
      tunnels.join(", ") || "none",
    ]);
    tr.dataset.network = n.id;
    return tr;
  });
  document.querySelector("#networks tbody").replaceChildren(...netRows);

  const groups = [...portsByHost.entries()].sort(([a], [b]) => a.localeCompare(b));
  if (unbound.length) groups.push(["(not bound)", unbound]);
  const blocks = groups.map(([host, list]) => {
    const block = el("div", null, "host-ports");
    block.dataset.hostPorts = host;
    block.append(el("h3", `${host}: ${list.length} port${list.length === 1 ? "" : "s"}`));
    const table = document.createElement("table");
    const head = document.createElement("tr");
    head.append(...["port", "network", "IP addresses", "MAC", "status"].map((h) => el("th", h)));
    table.append(head);
    for (const p of list.slice().sort(byName)) {
      const tr = row([
        p.name || p.id,
        netById.get(p.network_id)?.name || p.network_id,
        (p.fixed_ips || []).map((ip) => ip.ip_address).join(", "),
        p.mac_address,
        badge(p.status),
      ]);
      tr.dataset.port = p.id;
      table.append(tr);
    }
    block.append(table);
    return block;
  });
  document.getElementById("ports").replaceChildren(...blocks);
}

function setState(text, detail) {
  const state = document.getElementById("state");
  state.textContent = text;
  state.className = `badge ${text}`;
  document.getElementById("updated").textContent = detail;
}

async function refresh() {
  try {
    const [hosts, networks, ports, status] = await Promise.all([
      get("/v2.0/hosts"),
      get("/v2.0/networks"),
      get("/v2.0/ports"),
      get("/tenantnet/status"),
    ]);
    render(hosts.hosts, networks.networks, ports.ports, status);
    document.getElementById("login").hidden = true;
    setState("live", `updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    if (err instanceof AuthNeeded) {
      document.getElementById("login").hidden = false;
      setState("error", "the API wants credentials");
    } else {
      setState("error", String(err.message || err));
    }
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  setState("loading", "trying the token at the next refresh");
});

refresh();
