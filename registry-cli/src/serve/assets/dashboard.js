// The registry dashboard: follows the change stream (/v1/events) and draws every service, its
// instances and its ring. Plain JavaScript, no framework, no build step. Every text that comes from
// the registry (ids, addresses, metadata) goes into the page as text, never as HTML.
'use strict';

/** name -> { name, stale, staleSince, revision, instances: Map(id -> instance), ring, ringKey,
 *  hover, pinned } */
const services = new Map();
/** The key box's last question, asked again when its service's membership changes. */
let question = null;
let lastEventId = '';
let source = null;

const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';

/** An element with attributes (`class`, `text`, `data-*`, event handlers `on*`) and children. */
function el(tag, attrs = {}, ...children) {
  const e = tag.startsWith('svg:') ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

/** A hue per instance id (FNV-1a of the id), the same as others come and go. */
function hue(id) {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193) >>> 0;
  return h % 360;
}

const hsl = (h) => `hsl(${Math.round(h)} 62% 47%)`;

/** Colours for a service's instances: each id's own hue, moved on by the golden angle while it
 *  is too close to one taken already (in id order), so that instances of a service differ. */
function palette(s) {
  const taken = [];
  const out = new Map();
  for (const id of [...s.instances.keys()].sort()) {
    let h = hue(id);
    const near = (t) => Math.min(Math.abs(t - h), 360 - Math.abs(t - h)) < 30;
    for (let tries = 0; tries < 12 && taken.some(near); tries++) h = (h + 137.5) % 360;
    taken.push(h);
    out.set(id, hsl(h));
  }
  return out;
}

/** The colour of instance `id` of service `s`. */
const colour = (s, id) => (s && s.palette && s.palette.get(id)) || hsl(hue(id));

const pct = (x) => (x * 100).toFixed(x < 0.001 ? 3 : 1) + ' %';
const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString() : '?');
const ago = (iso) => (iso ? Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000)) + ' s' : '?');

function service(name) {
  let s = services.get(name);
  if (!s) {
    s = { name, stale: false, staleSince: null, revision: 0, instances: new Map(), ring: null,
      ringKey: null, hover: null, pinned: null };
    services.set(name, s);
  }
  return s;
}

// ---- The change stream -------------------------------------------------------------------------

function connect() {
  // After a reconnection the browser sends Last-Event-ID by itself; a stream this page reopens
  // (the old one was closed for good) resumes with ?last_event_id= instead.
  const url = '/v1/events' + (lastEventId ? '?last_event_id=' + encodeURIComponent(lastEventId) : '');
  source = new EventSource(url);
  source.addEventListener('open', () => setConn('live'));
  source.addEventListener('error', () => {
    setConn('lost');
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  });
  source.addEventListener('resync', (e) => onResync(e));
  source.addEventListener('insert', (e) => onInstance(e));
  source.addEventListener('update', (e) => onInstance(e));
  source.addEventListener('remove', (e) => onRemove(e));
  source.addEventListener('stale', (e) => onStale(e, true));
  source.addEventListener('fresh', (e) => onStale(e, false));
}

function read(e) {
  if (e.lastEventId) lastEventId = e.lastEventId;
  return JSON.parse(e.data);
}

function onResync(e) {
  const d = read(e);
  const old = services;
  const fresh = new Map();
  for (const doc of d.services) {
    const s = old.get(doc.name) || service(doc.name);
    s.stale = doc.stale;
    s.staleSince = doc.stale_since;
    s.revision = doc.revision;
    s.instances = new Map(doc.instances.map((i) => [i.id, i]));
    fresh.set(doc.name, s);
  }
  services.clear();
  for (const [k, v] of fresh) services.set(k, v);
  for (const name of services.keys()) membershipChanged(name);
  schedule();
}

function onInstance(e) {
  const d = read(e);
  const s = service(d.service);
  const before = s.instances.get(d.id);
  s.instances.set(d.id, d.instance);
  s.revision = d.revision;
  if (!before || before.routable !== d.instance.routable || before.weight !== d.instance.weight) {
    membershipChanged(d.service);
  }
  schedule();
}

function onRemove(e) {
  const d = read(e);
  const s = service(d.service);
  const before = s.instances.get(d.id);
  s.instances.delete(d.id);
  s.revision = d.revision;
  if (s.pinned === d.id) s.pinned = null;
  if (s.hover === d.id) s.hover = null;
  if (before && before.routable) membershipChanged(d.service);
  schedule();
}

function onStale(e, stale) {
  const d = read(e);
  const s = service(d.service);
  s.stale = stale;
  s.staleSince = stale ? d.time : null;
  schedule();
}

function setConn(state) {
  const c = $('conn');
  c.dataset.state = state;
  c.textContent = { live: 'live', lost: 'reconnecting', connecting: 'connecting' }[state];
  const b = $('conn-banner');
  b.hidden = state !== 'lost';
  b.textContent = 'Lost the connection to this server; reconnecting. What is shown may be out of date.';
}

// ---- Rings and owners (JSON API) ----------------------------------------------------------------

const ringTimers = new Map();
const ringAsked = new Map();

/** The routable membership of `name` changed: fetch its ring (and the key box's answer) soon. */
function membershipChanged(name) {
  clearTimeout(ringTimers.get(name));
  ringTimers.set(name, setTimeout(() => fetchRing(name), 100));
  if (question && question.service === name) {
    setTimeout(() => ask(question, false), 100);
  }
}

async function fetchRing(name) {
  const s = services.get(name);
  if (!s) return;
  const n = (ringAsked.get(name) || 0) + 1;
  ringAsked.set(name, n);
  let url = `/v1/services/${encodeURIComponent(name)}/ring`;
  if (s.ringKey !== null) url += '?key=' + encodeURIComponent(s.ringKey);
  try {
    const r = await fetch(url);
    if (!r.ok) return; // a service the server no longer knows: the stream says so too
    const ring = await r.json();
    if (ringAsked.get(name) === n && services.get(name) === s) {
      s.ring = ring;
      schedule();
    }
  } catch (_) {
    // The server is unreachable: the stream's error handler shows it.
  }
}

async function ask(q, fromForm) {
  const out = $('key-result');
  const url = `/v1/services/${encodeURIComponent(q.service)}/owners?key=${encodeURIComponent(q.key)}&n=${q.n}`;
  if (fromForm) out.replaceChildren(el('span', { text: 'asking…' }));
  let doc;
  try {
    const r = await fetch(url);
    doc = await r.json();
    if (!r.ok) throw new Error(doc.error || r.statusText);
  } catch (err) {
    out.replaceChildren(el('span', { class: 'error', text: String(err.message || err) }));
    out.dataset.owners = '';
    return;
  }
  if (question !== q) return; // a newer question was asked meanwhile
  const list = el('ol');
  for (const o of doc.owners) {
    list.append(el('li', { 'data-owner': o.id },
      el('span', { class: 'swatch', 'data-colour': colour(services.get(q.service), o.id) }),
      ' ', el('b', { text: o.id }), ' ', el('span', { class: 'addr', text: o.addrs.join(', ') })));
  }
  const head = doc.owners.length
    ? `key "${doc.key}" of ${doc.service} is owned by:`
    : `${doc.service} has no routable instance: key "${doc.key}" has no owner.`;
  out.replaceChildren(el('div', { text: head + (doc.stale ? ' (stale view)' : '') }), list);
  out.dataset.owners = doc.owners.map((o) => o.id).join(',');
  out.dataset.key = doc.key;
  paintSwatches(out);
}

function paintSwatches(root) {
  // Colours are set through the CSSOM: the page's policy forbids inline style attributes.
  for (const sw of root.querySelectorAll('[data-colour]')) sw.style.background = sw.dataset.colour;
}

// ---- Drawing -------------------------------------------------------------------------------------

let scheduled = false;

/** Coalesces the events of one burst into one redraw. */
function schedule() {
  if (scheduled) return;
  scheduled = true;
  const run = () => {
    if (!scheduled) return;
    scheduled = false;
    render();
  };
  requestAnimationFrame(run);
  setTimeout(run, 100); // rAF does not run in a hidden tab
}

function render() {
  const main = $('services');
  const names = [...services.keys()].sort();
  if (!names.length) {
    main.replaceChildren(el('p', { class: 'empty', text: 'No service in this namespace yet.' }));
  } else {
    main.replaceChildren(...names.map((n) => card(services.get(n))));
    paintSwatches(main);
  }
  renderKeyServices(names);
  renderStale();
  let total = 0;
  for (const s of services.values()) total += s.instances.size;
  $('summary').textContent = `${names.length} service${names.length === 1 ? '' : 's'}, ${total} instance${total === 1 ? '' : 's'}`;
}

function renderKeyServices(names) {
  const sel = $('key-service');
  const current = sel.value;
  const have = [...sel.options].map((o) => o.value).join('\n');
  if (have !== names.join('\n')) {
    sel.replaceChildren(...names.map((n) => el('option', { value: n, text: n })));
    if (names.includes(current)) sel.value = current;
  }
}

function renderStale() {
  const stale = [...services.values()].filter((s) => s.stale);
  const b = $('stale-banner');
  b.hidden = stale.length === 0;
  document.title = (stale.length ? '(stale) ' : '') + 'registry';
  if (!stale.length) {
    b.textContent = '';
    return;
  }
  const since = stale.map((s) => s.staleSince).filter(Boolean).sort()[0];
  b.textContent = `Stale view: the backend has been unreachable since ${clock(since)} (for ${ago(since)}) ` +
    `for ${stale.map((s) => s.name).join(', ')}. Shown is the last good view; it updates when the backend answers again.`;
  b.dataset.since = since || '';
}
setInterval(() => { if (!$('stale-banner').hidden) renderStale(); }, 1000);

/** Redraws only on a real change: a redraw puts new elements under the pointer, which enter it. */
function hover(s, id) {
  if (s.hover !== id) {
    s.hover = id;
    schedule();
  }
}

function pin(s, id) {
  s.pinned = s.pinned === id ? null : id;
  schedule();
}

function card(s) {
  s.palette = palette(s);
  const list = [...s.instances.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const routable = list.filter((i) => i.routable).length;
  const offline = list.filter((i) => i.state !== 'online').length;
  const shares = new Map((s.ring ? s.ring.members : []).map((m) => [m.id, m]));
  const focus = s.hover || s.pinned;
  const title = el('h2', {}, el('span', { text: s.name }),
    el('small', { text: `${list.length} instance${list.length === 1 ? '' : 's'} · ${routable} routable · ${offline} offline · revision ${s.revision}` }),
    s.stale ? el('span', { class: 'badge stale', text: `stale since ${clock(s.staleSince)}` }) : null);
  const rows = list.map((i) => {
    const m = shares.get(i.id);
    const tr = el('tr', {
      class: 'instance' + (i.routable ? '' : ' not-routable') + (focus === i.id ? ' selected' : ''),
      'data-instance': i.id, 'data-state': i.state,
      onmouseenter: () => hover(s, i.id),
      onmouseleave: () => hover(s, null),
      onclick: () => pin(s, i.id),
    },
    el('td', {}, el('span', { class: 'swatch', 'data-colour': i.routable ? colour(s, i.id) : null })),
    el('td', { text: i.id }),
    el('td', { class: 'addr', text: i.addrs.join(' ') }),
    el('td', {}, el('span', { class: 'badge ' + i.state, text: i.state }),
      i.hidden ? el('span', { class: 'badge hidden-probe', title: 'a failing liveness probe hides it from routing', text: 'hidden by probe' }) : null),
    el('td', { text: i.version || '–' }),
    el('td', { class: 'source', text: i.source || '–' }),
    el('td', { text: String(i.weight) }),
    el('td', { class: 'share', text: m ? pct(m.share) : '–' }),
    el('td', {}, ...Object.entries(i.metadata || {}).map(([k, v]) => el('span', { class: 'meta', text: `${k}=${v}` }))));
    return tr;
  });
  const table = el('table', {},
    el('thead', {}, el('tr', {}, ...['', 'id', 'addresses', 'state', 'version', 'source', 'weight', 'share', 'metadata'].map((h) => el('th', { text: h })))),
    el('tbody', {}, ...rows));
  const body = el('div', { class: 'body' }, el('div', { class: 'ring' }, ringPicture(s, focus), detail(s, focus)),
    list.length ? table : el('p', { class: 'empty', text: 'No instance.' }));
  return el('section', { class: 'service' + (s.stale ? ' is-stale' : ''), 'data-service': s.name }, title, body);
}

/** The point at fraction `f` of the circle (0 at the top, clockwise) on radius `r`. */
function at(f, r) {
  const a = 2 * Math.PI * f - Math.PI / 2;
  return [(r * Math.cos(a)).toFixed(4), (r * Math.sin(a)).toFixed(4)];
}

function ringPicture(s, focus) {
  const pic = el('svg:svg', { viewBox: '-1.1 -1.1 2.2 2.2', role: 'img', 'aria-label': `ring of ${s.name}` });
  const ring = s.ring;
  if (!ring || !ring.members.length) {
    pic.append(el('svg:circle', { r: '0.85', fill: 'none', stroke: '#dde3ea', 'stroke-width': '0.22' }));
    pic.append(el('svg:text', { class: 'hole', 'text-anchor': 'middle', y: '0.05', text: ring ? 'no routable instance' : 'loading' }));
    return pic;
  }
  for (const arc of ring.arcs) {
    const id = ring.members[arc.member].id;
    // SVG cannot draw a whole circle as one arc: pieces of at most half of it.
    for (let from = arc.from; from < arc.to; from += 0.5) {
      const to = Math.min(arc.to, from + 0.5);
      const [x1, y1] = at(from, 0.85);
      const [x2, y2] = at(to, 0.85);
      pic.append(el('svg:path', {
        d: `M ${x1} ${y1} A 0.85 0.85 0 0 1 ${x2} ${y2}`,
        fill: 'none', stroke: colour(s, id), 'stroke-width': '0.22',
        class: focus && focus !== id ? 'dim' : null, 'data-member': id,
        onmouseenter: () => hover(s, id),
        onmouseleave: () => hover(s, null),
        onclick: () => pin(s, id),
      }, el('svg:title', { text: `${id}: ${pct(ring.members[arc.member].share)}` })));
    }
  }
  if (ring.key) {
    const [x1, y1] = at(ring.key.position, 0.6);
    const [x2, y2] = at(ring.key.position, 1.05);
    pic.append(el('svg:line', { x1, y1, x2, y2, stroke: '#1c2430', 'stroke-width': '0.03', 'data-key': ring.key.key },
      el('svg:title', { text: `key "${ring.key.key}" → ${ring.key.owner || 'no owner'}` })));
  }
  const label = focus && ring.members.find((m) => m.id === focus);
  pic.append(el('svg:text', { class: 'hole', 'text-anchor': 'middle', y: '0.05',
    text: label ? pct(label.share) : `${ring.points} points` }));
  return pic;
}

function detail(s, focus) {
  const d = el('div', { class: 'detail', 'data-detail': focus || '' });
  const i = focus && s.instances.get(focus);
  if (!i) {
    d.textContent = s.ring && s.ring.members.length ? 'Hover or click an instance.' : '';
    return d;
  }
  const m = s.ring && s.ring.members.find((x) => x.id === focus);
  d.append(el('b', { text: i.id }), ` owns ${m ? pct(m.share) : 'no share (not routable)'} of the key space`,
    m ? ` (${m.points} points, weight ${m.weight})` : '', el('br'));
  const meta = Object.entries(i.metadata || {});
  if (meta.length) for (const [k, v] of meta) d.append(el('span', { class: 'meta', text: `${k}=${v}` }));
  else d.append('no metadata');
  return d;
}

// ---- The key box ---------------------------------------------------------------------------------

function onAsk(ev) {
  ev.preventDefault();
  const service = $('key-service').value;
  const key = $('key-input').value;
  const n = Math.min(64, Math.max(1, parseInt($('key-n').value, 10) || 1));
  if (!service || !key) return;
  for (const s of services.values()) if (s.ringKey !== null) { s.ringKey = null; fetchRing(s.name); }
  const s = services.get(service);
  if (s) s.ringKey = key;
  question = { service, key, n };
  ask(question, true);
  fetchRing(service);
}

document.addEventListener('DOMContentLoaded', () => {
  $('key-form').addEventListener('submit', onAsk);
  connect();
});
