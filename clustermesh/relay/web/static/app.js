// The relay's page: service map, flow table, mesh status. Every string
// from the API comes from workloads and is hostile: it is only ever set
// as text (textContent, attribute values), never parsed as HTML.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const MAX_ROWS = 500;

// el makes an element of the page (or of the SVG with ns) with attributes
// and text.
function el(tag, attrs, text, ns) {
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
const svg = (tag, attrs, text) => el(tag, attrs, text, SVG);

// verdictClass: a fixed set of class names, whatever the API says.
function verdictClass(v) {
  if (v === 'FORWARDED') return 'forwarded';
  if (v === 'DROPPED') return 'dropped';
  return 'other';
}

function clip(s, n) {
  s = String(s);
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}

// ---- service map ----

const NODE_W = 160, NODE_H = 30, GAP = 14, GAP_X = 64, NS_PAD = 10, NS_HEAD = 20, CL_PAD = 12, CL_HEAD = 24, CL_GAP = 90, COLS = 2;

// layout places clusters side by side, their namespaces stacked, their
// workloads in a grid; it returns the boxes and each workload's position.
function layout(m) {
  const boxes = [], pos = new Map();
  let x = 10;
  for (const c of m.clusters) {
    let y = 10 + CL_HEAD, width = 0;
    const nsBoxes = [];
    for (const ns of c.namespaces) {
      const cols = Math.min(COLS, ns.workloads.length);
      const rows = Math.ceil(ns.workloads.length / cols);
      const w = 2 * NS_PAD + cols * NODE_W + (cols - 1) * GAP_X;
      const h = NS_HEAD + NS_PAD + rows * NODE_H + (rows - 1) * GAP;
      nsBoxes.push({ ns, y, w, h });
      ns.workloads.forEach((wl, i) => {
        pos.set(wl.id, { x: x + CL_PAD + NS_PAD + (i % cols) * (NODE_W + GAP_X), y: y + NS_HEAD + Math.floor(i / cols) * (NODE_H + GAP), wl });
      });
      y += h + GAP;
      width = Math.max(width, w);
    }
    boxes.push({ c, x, y: 10, w: width + 2 * CL_PAD, h: y - 10 + CL_PAD - GAP, nsBoxes });
    x += width + 2 * CL_PAD + CL_GAP;
  }
  const height = Math.max(60, ...boxes.map(b => b.y + b.h + 10));
  return { boxes, pos, width: Math.max(200, x - CL_GAP + 10), height };
}

function drawMap(m) {
  const root = document.getElementById('map');
  root.replaceChildren();
  const { boxes, pos, width, height } = layout(m);
  root.setAttribute('width', width);
  root.setAttribute('height', height);
  root.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const defs = svg('defs');
  for (const v of ['forwarded', 'dropped', 'other']) {
    const mk = svg('marker', { id: 'arrow-' + v, viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    mk.append(svg('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow ' + v }));
    defs.append(mk);
  }
  root.append(defs);
  for (const b of boxes) {
    const g = svg('g', { class: 'cluster', 'data-name': b.c.name });
    g.append(svg('rect', { class: 'cluster-box', x: b.x, y: b.y, width: b.w, height: b.h, rx: 8 }));
    g.append(svg('text', { class: 'cluster-title', x: b.x + CL_PAD, y: b.y + 17 }, 'cluster ' + (b.c.name || '(unnamed)')));
    for (const n of b.nsBoxes) {
      const ng = svg('g', { class: 'namespace', 'data-name': n.ns.name });
      ng.append(svg('rect', { class: 'ns-box', x: b.x + CL_PAD, y: n.y, width: n.w, height: n.h, rx: 6 }));
      ng.append(svg('text', { class: 'ns-title', x: b.x + CL_PAD + NS_PAD, y: n.y + 15 }, n.ns.name ? 'namespace ' + clip(n.ns.name, 40) : 'reserved identities'));
      g.append(ng);
    }
    root.append(g);
  }
  const labels = [];
  for (const e of m.edges) {
    const a = pos.get(e.source), b = pos.get(e.destination);
    if (!a || !b) continue;
    const verdicts = Object.entries(e.verdicts).sort();
    verdicts.forEach(([v, n], i) => {
      const cls = verdictClass(v);
      const d = edgePath(a, b, i);
      const p = svg('path', { d: d.path, class: 'edge ' + cls, 'marker-end': `url(#arrow-${cls})`,
        'data-verdict': v, 'data-source': a.wl.name, 'data-destination': b.wl.name });
      const lines = [`${a.wl.name} → ${b.wl.name}`, `${v} ×${n}`];
      if (e.ports) lines.push(e.ports.join(' '));
      for (const s of e.l7 || []) lines.push(`${s.text} ×${s.count}`);
      p.append(svg('title', {}, lines.join('\n')));
      root.append(p);
      if (i === 0) {
        const top = (e.l7 && e.l7.length) ? `${clip(e.l7[0].text, 28)} ×${e.l7[0].count}` : '';
        if (top) labels.push(svg('text', { class: 'edge-label', x: d.mx, y: d.my, 'text-anchor': 'middle' }, top));
      }
    });
  }
  root.append(...labels); // under the workloads: their names stay readable
  for (const { x, y, wl } of pos.values()) {
    const g = svg('g', { class: 'workload' + (wl.reserved ? ' reserved' : ''), 'data-name': wl.name });
    g.append(svg('rect', { x, y, width: NODE_W, height: NODE_H, rx: 5 }));
    g.append(svg('text', { x: x + 8, y: y + 19 }, clip(wl.name, 24)));
    const pods = (wl.pods || []).join(', ');
    g.append(svg('title', {}, `${wl.name}\n${wl.flows} flows${pods ? '\npods: ' + pods : ''}`));
    root.append(g);
  }
  const info = document.getElementById('map-info');
  info.textContent = `${m.flows} flows` + (m.omitted ? `, ${m.omitted} left out` : '');
}

// edgePath: a curve between two workloads' boxes (the k-th verdict of an
// edge bends further), a loop for a workload's flows to itself.
function edgePath(a, b, k) {
  const ax = a.x + NODE_W / 2, ay = a.y + NODE_H / 2, bx = b.x + NODE_W / 2, by = b.y + NODE_H / 2;
  if (a === b) {
    const r = 14 + 8 * k, sx = a.x + NODE_W, sy = a.y + 8;
    return { path: `M${sx},${sy} C${sx + 3 * r},${sy - 2 * r} ${sx + 3 * r},${sy + NODE_H} ${sx},${sy + NODE_H - 12}`, mx: sx + 2 * r, my: sy };
  }
  // Leave and enter at the boxes' edges on the line between centres.
  const cut = (cx, cy, dx, dy) => {
    const t = Math.min(NODE_W / 2 / Math.abs(dx || 1e-9), NODE_H / 2 / Math.abs(dy || 1e-9));
    return [cx + dx * t, cy + dy * t];
  };
  const dx = bx - ax, dy = by - ay, len = Math.hypot(dx, dy) || 1;
  const [sx, sy] = cut(ax, ay, dx, dy), [ex, ey] = cut(bx, by, -dx, -dy);
  const bend = 18 + 22 * k, nx = -dy / len * bend, ny = dx / len * bend;
  const cx = (sx + ex) / 2 + nx, cy = (sy + ey) / 2 + ny;
  return { path: `M${sx},${sy} Q${cx},${cy} ${ex},${ey}`, mx: (sx + 2 * cx + ex) / 4, my: (sy + 2 * cy + ey) / 4 - 3 };
}

async function loadMap() {
  const info = document.getElementById('map-info');
  try {
    const r = await fetch('/api/map', { cache: 'no-store' });
    if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
    drawMap(await r.json());
  } catch (e) {
    info.textContent = 'map: ' + e.message;
    info.classList.add('error');
  }
}

// ---- flow table ----

function endpointName(ep) {
  if (!ep) return '';
  let name = '';
  if (ep.podName) name = (ep.namespace ? ep.namespace + '/' : '') + ep.podName;
  else {
    const reserved = (ep.labels || []).find(l => l.startsWith('reserved:'));
    const app = (ep.labels || []).find(l => /^(k8s:)?app=/.test(l));
    name = reserved || (app ? (ep.namespace ? ep.namespace + '/' : '') + app.replace(/^(k8s:)?app=/, '') : (ep.identity ? 'identity ' + ep.identity : ''));
  }
  // The identity's cluster label names the endpoint's cluster (a node
  // sees remote endpoints too), else the endpoint's own field.
  const cl = (ep.labels || []).map(l => l.match(/^(?:[^:=]*:)?(?:filament\.io\/cluster|io\.cilium\.k8s\.policy\.cluster)=(.*)$/)).find(x => x);
  const cluster = cl ? cl[1] : ep.clusterName;
  return cluster ? `${cluster}: ${name}` : name;
}

function ports(f) {
  const l4 = f.l4 || {};
  const p = l4.TCP || l4.UDP || l4.SCTP;
  return p ? [p.sourcePort || 0, p.destinationPort || 0] : [null, null];
}

function l4Text(f) {
  const l4 = f.l4 || {};
  for (const k of ['TCP', 'UDP', 'SCTP', 'ICMPv4', 'ICMPv6']) {
    if (l4[k]) {
      const flags = k === 'TCP' && l4.TCP.flags ? ' ' + Object.keys(l4.TCP.flags).filter(x => l4.TCP.flags[x]).join(',') : '';
      return k + (l4[k].destinationPort ? ' ' + l4[k].destinationPort : '') + flags;
    }
  }
  return '';
}

function typeText(f) {
  const l7 = f.l7;
  if (l7 && l7.http) return `${l7.http.protocol || 'HTTP'} ${l7.http.method || ''} ${l7.http.url || ''} ${l7.http.code || ''}`.trim();
  if (l7 && l7.dns) return `DNS ${l7.dns.query || ''} ${(l7.dns.qtypes || []).join(',')}${l7.dns.rcode ? ' rcode ' + l7.dns.rcode : ''}`.trim();
  if (l7 && l7.kafka) return `Kafka ${l7.kafka.apiKey || ''} ${l7.kafka.topic || ''}`.trim();
  return l4Text(f);
}

function cell(cls, text, sub) {
  const td = el('td', cls ? { class: cls } : {}, text);
  if (sub) td.append(el('span', { class: 'sub' }, sub));
  td.title = sub ? `${text} ${sub}` : text;
  return td;
}

function flowRow(f) {
  const [sp, dp] = ports(f);
  const ip = f.IP || {};
  const t = f.time ? new Date(f.time) : null;
  const time = t && !isNaN(t) ? t.toISOString().slice(11, 23) : '';
  const tr = el('tr', { class: 'v-' + verdictClass(f.verdict) });
  tr.append(
    cell('time', time),
    cell('src', endpointName(f.source), ip.source ? ip.source + (sp ? ':' + sp : '') : ''),
    cell('dst', endpointName(f.destination), ip.destination ? ip.destination + (dp ? ':' + dp : '') : ''),
    cell('verdict', f.verdict || '', f.verdict === 'DROPPED' && f.dropReasonDesc ? f.dropReasonDesc : ''),
    cell('type', typeText(f)));
  tr.dataset.ts = t && !isNaN(t) ? String(t.getTime()) : '0';
  return tr;
}

let live = null;   // the EventSource of a live table
let generation = 0; // a newer load supersedes an older one

function filterParams() {
  const p = new URLSearchParams();
  for (const k of ['namespace', 'pod', 'verdict', 'protocol']) {
    const v = document.getElementById('f-' + k).value.trim();
    if (v) p.set(k, v);
  }
  return p;
}

function insertRow(body, tr) {
  // Newest first: a flow is placed before the first older one.
  let at = body.firstChild;
  while (at && Number(at.dataset.ts) > Number(tr.dataset.ts)) at = at.nextSibling;
  body.insertBefore(tr, at);
  while (body.childNodes.length > MAX_ROWS) body.lastChild.remove();
}

async function loadFlows() {
  const gen = ++generation;
  if (live) { live.close(); live = null; }
  const body = document.querySelector('#flows tbody');
  const info = document.getElementById('flows-info');
  info.classList.remove('error');
  const p = filterParams();
  if (document.getElementById('f-live').checked) {
    body.replaceChildren();
    p.set('follow', '1');
    p.set('last', '100');
    live = new EventSource('/api/flows?' + p);
    info.textContent = 'live';
    live.onmessage = ev => {
      const r = JSON.parse(ev.data);
      if (r.flow) insertRow(body, flowRow(r.flow));
    };
    // A failure is final (a refused filter): no reconnecting. A stream
    // that merely ended (its lifetime) is reopened by the EventSource.
    const es = live;
    es.addEventListener('failure', ev => { es.close(); info.textContent = 'error: ' + JSON.parse(ev.data); info.classList.add('error'); });
    return;
  }
  p.set('last', '200');
  try {
    const r = await fetch('/api/flows?' + p, { cache: 'no-store' });
    const text = await r.text();
    if (!r.ok) throw new Error(`${r.status} ${text}`);
    if (gen !== generation) return;
    const rows = [];
    let lost = 0;
    for (const line of text.split('\n')) {
      if (!line) continue;
      const resp = JSON.parse(line);
      if (resp.flow) rows.push(flowRow(resp.flow));
      if (resp.lostEvents) lost += Number(resp.lostEvents.numEventsLost || 0);
    }
    rows.sort((a, b) => Number(b.dataset.ts) - Number(a.dataset.ts));
    body.replaceChildren(...rows);
    info.textContent = `${rows.length} flows` + (lost ? `, ${lost} lost` : '');
  } catch (e) {
    if (gen !== generation) return;
    info.textContent = 'flows: ' + e.message;
    info.classList.add('error');
  }
}

// ---- status ----

// renderValue shows any JSON value: objects as term lists, lists of
// objects as tables, the rest as text; bounded in depth and size.
function renderValue(v, depth) {
  if (v === null || v === undefined || typeof v !== 'object') return document.createTextNode(v == null ? '' : String(v));
  if (depth > 4) return document.createTextNode(clip(JSON.stringify(v), 200));
  if (Array.isArray(v)) {
    const items = v.slice(0, 200);
    if (items.length && items.every(x => x && typeof x === 'object' && !Array.isArray(x))) {
      const cols = [...new Set(items.flatMap(x => Object.keys(x)))].slice(0, 12);
      const t = el('table'), head = el('tr');
      cols.forEach(c => head.append(el('th', {}, c)));
      t.append(head);
      for (const x of items) {
        const tr = el('tr');
        cols.forEach(c => { const td = el('td'); td.append(renderValue(x[c], depth + 1)); tr.append(td); });
        t.append(tr);
      }
      return t;
    }
    return document.createTextNode(items.map(x => typeof x === 'object' ? JSON.stringify(x) : String(x)).join(', '));
  }
  const dl = el('dl');
  for (const [k, x] of Object.entries(v).slice(0, 100)) {
    const dd = el('dd');
    dd.append(renderValue(x, depth + 1));
    dl.append(el('dt', {}, k), dd);
  }
  return dl;
}

async function loadStatus() {
  const section = document.getElementById('status-section');
  try {
    const r = await fetch('/api/status', { cache: 'no-store' });
    if (r.status === 404) { section.hidden = true; return; }
    section.hidden = false;
    const box = document.getElementById('status');
    if (!r.ok) { box.replaceChildren(el('span', { class: 'error' }, `${r.status} ${await r.text()}`)); return; }
    box.replaceChildren(renderValue(await r.json(), 0));
  } catch (e) {
    section.hidden = false;
    document.getElementById('status').replaceChildren(el('span', { class: 'error' }, 'status: ' + e.message));
  }
}

document.addEventListener('DOMContentLoaded', () => {
  const form = document.getElementById('filters');
  form.addEventListener('submit', ev => { ev.preventDefault(); loadFlows(); });
  for (const id of ['f-verdict', 'f-protocol', 'f-live']) document.getElementById(id).addEventListener('change', loadFlows);
  document.getElementById('map-refresh').addEventListener('click', () => { loadMap(); loadStatus(); });
  loadMap();
  loadStatus();
  loadFlows();
  // While live, the map and status follow too.
  setInterval(() => { if (live) { loadMap(); loadStatus(); } }, 15000);
});
