// Hookyard console: the admin API in a browser. Vanilla ES2020, no build step, no dependencies.
//
// Served by the admin listener under a strict CSP (no inline script or style, no eval, 'self'
// only). Everything shown comes from the API and may carry an attacker's text (an event's body
// and headers are whatever a sender posted), so the DOM is built with createElement and
// textContent only: never innerHTML, never a URL or an event handler taken from data.
//
// The admin token lives in sessionStorage (this tab only), never in localStorage or a cookie.
'use strict';

(() => {
  const TOKEN_KEY = 'hookyard.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const FILTER_KEYS = ['source', 'route', 'destination', 'status', 'since', 'until', 'q'];
  const STATUSES = ['pending', 'delivered', 'failed', 'dead', 'cancelled', 'skipped'];
  /** Rows kept in the events table while the tail prepends (older ones fall off the bottom). */
  const MAX_ROWS = 500;
  /** Events kept while the tail is paused; more are counted but dropped. */
  const MAX_BUFFER = 1000;
  const PAGE_SIZE = 50;

  const state = {
    token: null,
    who: null,
    /** Bumped on every render: an async page whose number is stale stops drawing. */
    seq: 0,
    /** Cleaned up when the page changes (timers, the tail's connection). */
    cleanups: [],
  };

  // ---------------------------------------------------------------------------------------------
  // DOM helpers: text only, never markup

  const $ = (sel, root = document) => root.querySelector(sel);

  function append(parent, kids) {
    for (const kid of kids) {
      if (kid === null || kid === undefined || kid === false) continue;
      if (Array.isArray(kid)) append(parent, kid);
      else if (kid instanceof Node) parent.appendChild(kid);
      else parent.appendChild(document.createTextNode(String(kid)));
    }
    return parent;
  }

  /** `el('td', {class: 'num', 'data-x': 1, onclick: f}, 'text', child)`; strings become text nodes. */
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'class') e.className = v;
      else if (k === 'value') e.value = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    return append(e, kids);
  }

  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return append(e, kids);
  }

  const badge = (status, text, attrs) =>
    el('span', Object.assign({class: 'badge', 'data-status': status}, attrs), text === undefined ? status : text);

  const panel = (title, attrs, ...kids) => el('section', Object.assign({class: 'panel'}, attrs), title && el('h2', null, title), ...kids);

  function kv(pairs) {
    const dl = el('dl', {class: 'kv'});
    for (const [k, v, attrs] of pairs) append(dl, [el('dt', null, k), el('dd', attrs, v)]);
    return dl;
  }

  function table(headers, rows, attrs) {
    const head = el('tr', null, headers.map((h) => (Array.isArray(h) ? el('th', {class: h[1]}, h[0]) : el('th', null, h))));
    const body = el('tbody', null, rows);
    if (!rows.length) body.appendChild(el('tr', null, el('td', {class: 'empty', colspan: headers.length}, 'Nothing here.')));
    return el('div', {class: 'table-wrap'}, el('table', attrs, el('thead', null, head), body));
  }

  // ---------------------------------------------------------------------------------------------
  // Formatting

  const pad = (n) => String(n).padStart(2, '0');

  /** Local time, ISO-like: `2025-01-31 14:05:09`. */
  function fmtTime(ms) {
    if (ms === null || ms === undefined || ms === 0) return '—';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /** A duration in ms as `45s`, `3m 12s`, `2h 5m`, `3d 4h`. */
  function fmtAge(ms) {
    if (ms === null || ms === undefined) return '—';
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }

  const fmtPct = (x) => (x === null || x === undefined ? '—' : `${(x * 100).toFixed(1)}%`);
  const fmtMs = (x) => (x === null || x === undefined ? '—' : `${x} ms`);
  const fmtRate = (x) => (x >= 10 ? x.toFixed(0) : x.toFixed(2));
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many || one + 's'}`;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** Pretty JSON when the text is JSON, else the text as it is. */
  function pretty(text) {
    try {
      return {json: true, text: JSON.stringify(JSON.parse(text), null, 2)};
    } catch (_) {
      return {json: false, text};
    }
  }

  /** Headers as `[[name, value]]`, whether given as pairs or as an object. */
  const pairs = (h) => (Array.isArray(h) ? h : Object.entries(h || {}));

  // ---------------------------------------------------------------------------------------------
  // The API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const authHeaders = (token) => (token ? {Authorization: `Bearer ${token}`} : {});

  /**
   * One API call. Non-2xx throws an ApiError with the server's `{"error"}` message; a 401 (unless
   * `login` is set: the login form checks a token itself) ends the session and shows the login.
   */
  async function api(path, {method = 'GET', body, token = state.token, login = false} = {}) {
    const headers = authHeaders(token);
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store'});
    } catch (e) {
      throw new ApiError(0, `cannot reach the gateway (${e.message})`);
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (res.status === 401 && !login) {
      sessionEnded();
      throw new ApiError(401, 'signed out');
    }
    if (!res.ok) {
      const message = data && typeof data.error === 'string' ? data.error : `${res.status} ${res.statusText}`;
      throw new ApiError(res.status, `${method} ${path.split('?')[0]}: ${message}`);
    }
    return data;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------------------------------------
  // Banners and the confirmation dialog

  function showError(message) {
    $('#error-text').textContent = message;
    $('#error').hidden = false;
  }

  function showNotice(message) {
    $('#notice-text').textContent = message;
    $('#notice').hidden = false;
  }

  function clearBanners() {
    $('#error').hidden = true;
    $('#notice').hidden = true;
  }

  /** Reports an error unless it is the 401 that already brought the login back. */
  function report(e) {
    if (e && e.status === 401) return;
    showError(e && e.message ? e.message : String(e));
  }

  let asking = null;

  /**
   * An in-page confirmation (a `<dialog>`, so it can be clicked by a test and styled): resolves
   * to `null` when cancelled, else `{value}` (the text field's value when `input` is given).
   */
  function ask({title, message, ok = 'OK', danger = false, input = null}) {
    const dialog = $('#confirm');
    if (asking) asking(null);
    $('#confirm-title').textContent = title;
    $('#confirm-message').textContent = message;
    $('#confirm-field').hidden = !input;
    const field = $('#confirm-input');
    field.value = input ? input.value || '' : '';
    field.placeholder = input ? input.placeholder || '' : '';
    if (input) $('#confirm-label').textContent = input.label;
    const okButton = $('#confirm-ok');
    okButton.textContent = ok;
    okButton.className = danger ? 'btn btn-danger' : 'btn btn-primary';
    return new Promise((resolve) => {
      asking = (answer) => {
        asking = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      dialog.showModal();
      (input ? field : okButton).focus();
    });
  }

  function answer(ok) {
    if (asking) asking(ok ? {value: $('#confirm-input').value.trim()} : null);
  }

  // ---------------------------------------------------------------------------------------------
  // Signing in and out

  /** `whoami` with `token`; a gateway without the endpoint is asked for its status instead. */
  async function whoami(token) {
    try {
      return await api('/api/v1/whoami', {token, login: true});
    } catch (e) {
      if (e.status !== 404 && e.status !== 405) throw e;
      await api('/api/v1/status', {token, login: true});
      return {actor: token ? 'admin token' : 'anonymous', auth: Boolean(token)};
    }
  }

  function showLogin(message, kind = 'error') {
    leavePage();
    state.who = null;
    $('#shell').hidden = true;
    $('#view').replaceChildren();
    $('#login').hidden = false;
    const m = $('#login-message');
    m.hidden = !message;
    m.textContent = message || '';
    m.setAttribute('data-kind', kind);
    const input = $('#token');
    input.value = '';
    input.focus();
  }

  function sessionEnded() {
    if (!$('#login').hidden) return;
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('The gateway no longer accepts this token (401). Sign in again.');
  }

  function enter(who) {
    state.who = who;
    $('#whoami').textContent = who.auth === false ? `${who.actor || 'anonymous'} (no token configured)` : who.actor || '—';
    $('#logout').hidden = who.auth === false;
    $('#login').hidden = true;
    $('#login-message').hidden = true;
    $('#shell').hidden = false;
    if (!location.hash || location.hash === '#' || location.hash === '#/') location.hash = '#/overview';
    else render();
  }

  async function login(event) {
    event.preventDefault();
    const token = $('#token').value.trim();
    const button = $('#login-submit');
    button.disabled = true;
    try {
      const who = await whoami(token);
      state.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      enter(who);
    } catch (e) {
      const m = $('#login-message');
      m.textContent = e.status === 401 ? 'That token was refused (401): check admin.token in routes.yaml.' : e.message;
      m.setAttribute('data-kind', 'error');
      m.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  function logout() {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('You have signed out.', 'info');
  }

  // ---------------------------------------------------------------------------------------------
  // Routing: `#/page/arg?query`

  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const i = raw.indexOf('?');
    const path = i < 0 ? raw : raw.slice(0, i);
    const params = new URLSearchParams(i < 0 ? '' : raw.slice(i + 1));
    const parts = path.split('/').filter(Boolean).map((p) => {
      try {
        return decodeURIComponent(p);
      } catch (_) {
        return p;
      }
    });
    return {parts, params};
  }

  function leavePage() {
    state.seq += 1;
    for (const f of state.cleanups.splice(0)) f();
  }

  const PAGES = {overview: pageOverview, events: pageEvents, destinations: pageDestinations, routes: pageRoutes};

  /** Draws the page the hash names; `keep` keeps the banners (a refresh after an action). */
  async function render({keep = false} = {}) {
    if (!state.who) return;
    leavePage();
    if (!keep) clearBanners();
    const seq = state.seq;
    const {parts, params} = parseHash();
    const name = PAGES[parts[0]] ? parts[0] : 'overview';
    for (const a of document.querySelectorAll('[data-nav]')) a.classList.toggle('active', a.getAttribute('data-nav') === name);
    const ctx = {alive: () => seq === state.seq, refresh: () => ctx.alive() && render({keep: true})};
    const view = $('#view');
    if (!keep) view.replaceChildren(el('div', {class: 'muted', 'data-test': 'loading'}, 'Loading…'));
    try {
      const node = name === 'events' && parts[1] ? await pageEvent(ctx, parts[1]) : await PAGES[name](ctx, params);
      if (ctx.alive()) {
        const y = window.scrollY;
        view.replaceChildren(node);
        if (keep) window.scrollTo(0, y);
        document.title = `Hookyard · ${name}`;
      }
    } catch (e) {
      if (!ctx.alive()) return;
      report(e);
      view.replaceChildren(el('div', {class: 'muted'}, 'This page could not be loaded.'));
    }
  }

  /** Runs an operator action: shows its result, or its error, then refreshes the page. */
  async function act(ctx, what, fn) {
    try {
      const message = await fn();
      if (message) {
        $('#error').hidden = true;
        showNotice(message);
      }
    } catch (e) {
      report(e);
    }
    await ctx.refresh();
  }

  /**
   * Draws the page again a little later, and again (the attempts a replay started settle after
   * its answer); stops as soon as the operator moves to another page.
   */
  function refreshSoon(delays = [1000, 3000]) {
    if (!delays.length) return;
    const seq = state.seq;
    const t = setTimeout(async () => {
      if (seq !== state.seq) return;
      await render({keep: true});
      refreshSoon(delays.slice(1));
    }, delays[0]);
    state.cleanups.push(() => clearTimeout(t));
  }

  const replayedCount = (r) => (r ? r.replayed ?? r.queued ?? r.planned ?? 0 : 0);

  // ---------------------------------------------------------------------------------------------
  // Overview

  function chart(series, stepS, n) {
    const W = 1000, H = 190, L = 44, R = 8, T = 10, B = 22;
    const max = Math.max(0.1, ...series.flatMap((s) => s.values));
    const top = niceCeil(max);
    const x = (i) => L + (n <= 1 ? 0 : (i * (W - L - R)) / (n - 1));
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const root = svg('svg', {class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Events and deliveries per second, last 5 minutes', 'data-test': 'chart'});
    for (const f of [0, 0.5, 1]) {
      const v = top * f;
      root.appendChild(svg('line', {class: 'grid-line', x1: L, x2: W - R, y1: y(v), y2: y(v)}));
      root.appendChild(svg('text', {class: 'axis-label', x: L - 6, y: y(v) + 3, 'text-anchor': 'end'}, fmtRate(v)));
    }
    const span = (n * stepS) / 60;
    for (const [i, label, anchor] of [[0, `-${span.toFixed(0)}m`, 'start'], [Math.floor((n - 1) / 2), `-${(span / 2).toFixed(1)}m`, 'middle'], [n - 1, 'now', 'end']]) {
      root.appendChild(svg('text', {class: 'axis-label', x: x(i), y: H - 6, 'text-anchor': anchor}, label));
    }
    for (const s of series) {
      const points = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
      root.appendChild(svg('polyline', {class: `line line-${s.key}`, points, 'data-series': s.key}));
    }
    return root;
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function card(label, value, attrs, cls) {
    return el('div', {class: 'card'}, el('div', {class: 'card-label'}, label), el('div', Object.assign({class: `card-value ${cls || ''}`}, attrs), value));
  }

  async function pageOverview(ctx) {
    const [ov, st, ds] = await Promise.allSettled([api('/api/v1/overview'), api('/api/v1/status'), api('/api/v1/destinations')]);
    const failed = [ov, st, ds].filter((r) => r.status === 'rejected').map((r) => r.reason);
    if (failed.some((e) => e.status === 401)) throw failed.find((e) => e.status === 401);
    if (failed.length) showError(failed.map((e) => e.message).join(' · '));
    const overview = ov.status === 'fulfilled' ? ov.value : null;
    const status = st.status === 'fulfilled' ? st.value : null;
    const dests = ds.status === 'fulfilled' ? ds.value.items || [] : [];

    const t = setTimeout(() => ctx.refresh(), 10000);
    state.cleanups.push(() => clearTimeout(t));

    const sum = (xs) => (xs || []).reduce((a, b) => a + b, 0);
    const perSecond = (xs) => (overview && xs && xs.length ? sum(xs) / (xs.length * overview.step_s) : null);
    const evRate = perSecond(overview && overview.accepted);
    const dlRate = perSecond(overview && overview.delivered);
    const dead = sum(dests.map((d) => d.dead));
    const paused = dests.filter((d) => d.paused);
    const rate = overview ? overview.success_rate : null;

    const cards = el('div', {class: 'cards'},
      card('Events / s (5 min)', evRate === null ? '—' : fmtRate(evRate), {id: 'ov-events-rate', 'data-test': 'events-rate'}),
      card('Deliveries / s (5 min)', dlRate === null ? '—' : fmtRate(dlRate), {id: 'ov-deliveries-rate', 'data-test': 'deliveries-rate'}),
      card('Success rate', fmtPct(rate), {id: 'ov-success-rate', 'data-test': 'success-rate'}, rate === null || rate === undefined ? '' : rate >= 0.99 ? 'ok' : rate < 0.9 ? 'bad' : ''),
      card('Pending', String(sum(dests.map((d) => d.pending))), {id: 'ov-pending', 'data-test': 'pending'}),
      card('Dead letters', String(dead), {id: 'ov-dead', 'data-test': 'dead'}, dead ? 'bad' : ''),
      card('Paused', String(paused.length), {id: 'ov-paused', 'data-test': 'paused'}, paused.length ? 'bad' : ''));

    let traffic;
    if (overview) {
      const n = Math.max(overview.accepted.length, overview.delivered.length, (overview.failed || []).length);
      const rates = (xs) => (xs || []).map((v) => v / overview.step_s);
      traffic = panel('Traffic, last 5 minutes', {id: 'ov-chart'},
        el('div', {class: 'legend'}, el('span', {class: 'l-accepted'}, 'events/s'), el('span', {class: 'l-delivered'}, 'deliveries/s'), el('span', {class: 'l-failed'}, 'failed attempts/s')),
        chart([{key: 'accepted', values: rates(overview.accepted)}, {key: 'delivered', values: rates(overview.delivered)}, {key: 'failed', values: rates(overview.failed)}], overview.step_s, n),
        el('div', {class: 'muted small'}, `${overview.step_s} s buckets, ending ${fmtTime(overview.end_ms)}`));
    } else {
      traffic = panel('Traffic, last 5 minutes', {id: 'ov-chart'}, el('p', {class: 'muted'}, 'Not available from this gateway.'));
    }

    const queues = panel('Destinations', {id: 'ov-destinations'}, table(
      ['Destination', ['Pending', 'num'], ['Oldest due', 'num'], ['Dead', 'num'], 'Breaker', 'State'],
      dests.map((d) => el('tr', {'data-destination': d.name},
        el('td', {class: 'mono'}, d.name),
        el('td', {class: 'num'}, String(d.pending)),
        el('td', {class: 'num'}, d.pending ? fmtAge(d.oldest_due_ms) : '—'),
        el('td', {class: 'num'}, String(d.dead)),
        el('td', null, badge(d.breaker)),
        el('td', null, d.paused ? [badge('paused'), d.pause_reason ? el('div', {class: 'muted small'}, d.pause_reason) : null] : badge('active'))))));

    const config = panel('Configuration', {id: 'ov-config'}, status ? kv([
      ['Version', status.version, {class: 'mono', id: 'ov-config-version', 'data-test': 'config-version'}],
      ['Loaded', fmtTime(status.loaded_at_ms)],
      ['File', status.file, {class: 'mono'}],
      ['Store', status.store, {class: 'mono'}],
      ['Reloads', `${status.reloads_ok} ok, ${status.reloads_failed} failed`],
      ['Last reload', status.last_error
        ? el('div', {'data-test': 'last-reload'}, badge('error', 'failed'), ` ${fmtTime(status.last_error.at_ms)} (${status.last_error.trigger})`,
          el('pre', null, (status.last_error.errors || []).join('\n')))
        : el('span', {'data-test': 'last-reload'}, badge('delivered', 'ok'))],
      ['Needs restart', status.needs_restart && status.needs_restart.length ? status.needs_restart.join(', ') : 'nothing'],
    ]) : el('p', {class: 'muted'}, 'Not available.'));

    const page = el('div', {class: 'view', 'data-page': 'overview'},
      el('div', {class: 'page-head'}, el('div', null, el('h1', null, 'Overview'), el('div', {class: 'muted'}, 'Refreshes every 10 seconds.'))),
      cards, traffic, el('div', {class: 'grid grid-2'}, queues, config));
    if (status && status.cluster) page.appendChild(clusterPanel(status.cluster));
    return page;
  }

  function clusterPanel(c) {
    return panel('Cluster', {id: 'ov-cluster'},
      kv([['This node', c.node, {class: 'mono'}], ['Live', String(c.live)], ['Dead', String(c.dead)], ['Config drift', c.config_drift ? 'yes' : 'no']]),
      (c.warnings || []).map((w) => el('div', {class: 'banner banner-error'}, w)),
      table(['Node', 'Host', 'Address', 'Version', 'Config', 'State', ['Last seen', 'num']],
        (c.nodes || []).map((n) => el('tr', null,
          el('td', {class: 'mono'}, n.id, n.this ? ' (this)' : ''), el('td', null, n.host), el('td', {class: 'mono'}, n.address),
          el('td', null, n.version), el('td', {class: 'mono'}, n.config_version),
          el('td', null, badge(n.state === 'live' ? 'delivered' : n.state === 'dead' ? 'dead' : 'cancelled', n.state)),
          el('td', {class: 'num'}, `${fmtAge(n.age_ms)} ago`)))));
  }

  // ---------------------------------------------------------------------------------------------
  // Events: the log, its filters and the live tail

  function filtersOf(params) {
    const f = {};
    for (const k of FILTER_KEYS) f[k] = (params.get(k) || '').trim();
    return f;
  }

  function eventsHash(f, cursor) {
    const q = new URLSearchParams();
    for (const k of FILTER_KEYS) if (f[k]) q.set(k, f[k]);
    if (cursor) q.set('cursor', cursor);
    const s = q.toString();
    return `#/events${s ? '?' + s : ''}`;
  }

  function filterForm(f) {
    const input = (key, label, placeholder, cls) => el('div', {class: cls},
      el('label', {for: `f-${key}`}, label),
      el('input', {id: `f-${key}`, name: key, value: f[key], placeholder, autocomplete: 'off', spellcheck: 'false'}));
    const status = el('select', {id: 'f-status', name: 'status'}, el('option', {value: ''}, 'any'), STATUSES.map((s) => el('option', {value: s}, s)));
    status.value = f.status;
    const form = el('form', {id: 'filters', class: 'panel filters', 'data-test': 'filters'},
      input('source', 'Source', 'any'), input('route', 'Route', 'any'), input('destination', 'Destination', 'any'),
      el('div', null, el('label', {for: 'f-status'}, 'Delivery status'), status),
      input('since', 'Since', '1h, 2d or RFC 3339'), input('until', 'Until', 'now'),
      input('q', 'Search', 'event id, msg_… or $.path=value', 'wide'),
      el('div', {class: 'buttons'},
        el('button', {id: 'filter-apply', type: 'submit', class: 'btn btn-primary'}, 'Apply'),
        el('a', {id: 'filter-clear', class: 'btn', href: '#/events'}, 'Clear')));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const next = {};
      for (const k of FILTER_KEYS) next[k] = form.elements[k].value.trim();
      const hash = eventsHash(next);
      if (location.hash === hash) render();
      else location.hash = hash;
    });
    return form;
  }

  function deliveryBadge(d) {
    return el('span', {class: 'badge', 'data-status': d.status, 'data-delivery-id': d.id, 'data-destination': d.destination,
      title: `${d.route ? 'route ' + d.route + ', ' : ''}${plural(d.attempts || 0, 'attempt')}${d.last_status ? ', last ' + d.last_status : ''}`},
    el('span', {class: 'badge-dest'}, d.destination), d.status);
  }

  /** One row of the events table; `rows` maps event id → the row's delivery cell (the tail updates it). */
  function eventRow(ev, rows, fresh) {
    const cell = el('td', null);
    const deliveries = ev.deliveries;
    const list = el('div', {class: 'badges'});
    if (Array.isArray(deliveries)) for (const d of deliveries) list.appendChild(deliveryBadge(d));
    cell.appendChild(list);
    const count = Array.isArray(deliveries) ? deliveries.length : deliveries || 0;
    if (!count) cell.appendChild(el('span', {class: 'muted small', 'data-test': 'no-deliveries'}, ev.routes && ev.routes.length ? 'routed' : 'no route matched'));
    rows.set(ev.id, list);
    return el('tr', {'data-event-id': ev.id, 'data-source': ev.source, class: fresh ? 'fresh' : null},
      el('td', {class: 'nowrap'}, fmtTime(ev.received_at_ms)),
      el('td', null, el('a', {class: 'id', href: `#/events/${enc(ev.id)}`, 'data-test': 'event-link'}, ev.id)),
      el('td', {class: 'mono'}, ev.source),
      cell);
  }

  /** Whether an event from the tail belongs under the filters in force (only what it carries can tell). */
  function tailMatches(f, ev) {
    if (f.destination || f.status || f.until || f.q) return false;
    if (f.source && ev.source !== f.source) return false;
    if (f.route && !(ev.routes || []).includes(f.route)) return false;
    return true;
  }

  async function pageEvents(ctx, params) {
    const f = filtersOf(params);
    const cursor = params.get('cursor') || '';
    const q = new URLSearchParams();
    for (const k of FILTER_KEYS) if (f[k]) q.set(k, f[k]);
    if (cursor) q.set('cursor', cursor);
    q.set('limit', String(PAGE_SIZE));
    const form = filterForm(f);
    let data;
    try {
      data = await api(`/api/v1/events?${q}`);
    } catch (e) {
      if (e.status === 401) throw e;
      report(e);
      data = {items: [], next: null};
    }
    const rows = new Map();
    const tbody = el('tbody', {id: 'events-body'}, data.items.map((ev) => eventRow(ev, rows, false)));
    const empty = el('tr', {class: 'empty-row'}, el('td', {class: 'empty', colspan: 4}, 'No events match.'));
    if (!data.items.length) tbody.appendChild(empty);
    const tableNode = el('div', {class: 'table-wrap'}, el('table', {id: 'events-table'},
      el('thead', null, el('tr', null, el('th', null, 'Received'), el('th', null, 'Event'), el('th', null, 'Source'), el('th', null, 'Deliveries'))), tbody));

    const count = el('span', {class: 'muted small', id: 'events-count'}, plural(data.items.length, 'event') + (cursor ? ' on this page' : ''));
    const paging = el('div', {class: 'row'},
      cursor ? el('a', {class: 'btn', id: 'events-newest', href: eventsHash(f)}, '⇤ Newest') : null,
      data.next ? el('a', {class: 'btn', id: 'events-older', href: eventsHash(f, data.next)}, 'Older →') : null,
      count);

    const head = el('div', {class: 'page-head'}, el('div', null, el('h1', null, 'Events'), el('div', {class: 'muted'}, 'Newest first. Filters are kept in the address, so it can be shared.')));
    if (!cursor) head.appendChild(tailControls(f, tbody, rows, empty, count));
    return el('div', {class: 'view', 'data-page': 'events'}, head, form, el('section', {class: 'panel'}, tableNode), paging);
  }

  /** The live tail: `GET /api/v1/tail` read with fetch (EventSource cannot send the token). */
  function tailControls(f, tbody, rows, empty, count) {
    const t = {live: true, buffer: [], dropped: 0, ctrl: new AbortController(), stopped: false};
    const status = el('span', {id: 'tail-status', class: 'badge', 'data-status': 'connecting'}, 'connecting');
    const pending = el('span', {id: 'tail-pending', class: 'badge', 'data-status': 'pending', hidden: true});
    const toggle = el('button', {id: 'tail-toggle', type: 'button', class: 'btn'}, 'Pause');
    const setStatus = (s, text) => {
      status.setAttribute('data-status', s);
      status.textContent = text || s;
    };
    const showPending = () => {
      const n = t.buffer.length + t.dropped;
      pending.hidden = n === 0;
      pending.textContent = `${plural(n, 'new event')}${t.dropped ? ` (${t.dropped} dropped)` : ''}`;
    };
    const prepend = (ev) => {
      if (rows.has(ev.id)) return;
      empty.remove();
      tbody.insertBefore(eventRow(ev, rows, true), tbody.firstChild);
      while (tbody.children.length > MAX_ROWS) {
        const last = tbody.lastElementChild;
        rows.delete(last.getAttribute('data-event-id'));
        last.remove();
      }
      count.textContent = plural(rows.size, 'event');
    };
    toggle.addEventListener('click', () => {
      t.live = !t.live;
      toggle.textContent = t.live ? 'Pause' : 'Resume';
      if (t.live) {
        for (const ev of t.buffer.splice(0)) prepend(ev);
        t.dropped = 0;
      }
      showPending();
      if (status.getAttribute('data-status') === 'live' || status.getAttribute('data-status') === 'paused') setStatus(t.live ? 'live' : 'paused');
    });
    const onEvent = (ev) => {
      if (!tailMatches(f, ev)) return;
      ev.deliveries = [];
      if (t.live) prepend(ev);
      else if (t.buffer.length < MAX_BUFFER) t.buffer.push(ev);
      else t.dropped += 1;
      showPending();
    };
    const onDelivery = (d) => {
      const buffered = t.buffer.find((ev) => ev.id === d.event_id);
      if (buffered) {
        const i = buffered.deliveries.findIndex((x) => x.id === d.id);
        if (i < 0) buffered.deliveries.push(d);
        else buffered.deliveries[i] = d;
        return;
      }
      const list = rows.get(d.event_id);
      if (!list) return;
      const old = Array.from(list.children).find((b) => b.getAttribute('data-delivery-id') === String(d.id));
      const fresh = deliveryBadge(d);
      if (old) old.replaceWith(fresh);
      else {
        list.appendChild(fresh);
        const note = list.parentNode.querySelector('[data-test="no-deliveries"]');
        if (note) note.remove();
      }
    };
    state.cleanups.push(() => {
      t.stopped = true;
      t.ctrl.abort();
    });
    const onLagged = (l) => {
      t.dropped += l.missed || 0;
      showPending();
    };
    tailLoop(t, setStatus, (block) => dispatchSse(block, {event: onEvent, delivery: onDelivery, lagged: onLagged}));
    return el('div', {class: 'tail-bar', 'data-test': 'tail'}, el('span', {class: 'muted small'}, 'Live tail'), status, pending, toggle);
  }

  async function tailLoop(t, setStatus, dispatch) {
    let delay = 1000;
    while (!t.stopped) {
      setStatus('connecting');
      try {
        const res = await fetch('/api/v1/tail', {headers: authHeaders(state.token), signal: t.ctrl.signal, cache: 'no-store'});
        if (res.status === 401) {
          sessionEnded();
          return;
        }
        if (!res.ok) {
          const body = await res.json().catch(() => null);
          const message = body && body.error ? body.error : `${res.status}`;
          if (res.status === 404) {
            setStatus('error', `unavailable: ${message}`);
            return;
          }
          throw new Error(message);
        }
        setStatus(t.live ? 'live' : 'paused');
        delay = 1000;
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buf += decoder.decode(value, {stream: true}).replace(/\r\n?/g, '\n');
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            dispatch(block);
          }
        }
      } catch (e) {
        if (t.stopped) return;
        setStatus('error', `disconnected: ${e.message}`);
      }
      if (t.stopped) return;
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  }

  /**
   * One server-sent event block: `event:` and `data:` lines, to `handlers[event]`; comments
   * (`: keepalive`) ignored. `lagged`: the server skipped events this client was too slow for.
   */
  function dispatchSse(block, handlers) {
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return;
    let payload;
    try {
      payload = JSON.parse(data.join('\n'));
    } catch (_) {
      return;
    }
    if (Object.prototype.hasOwnProperty.call(handlers, type)) handlers[type](payload);
  }

  // ---------------------------------------------------------------------------------------------
  // One event

  /** The routing of an event (`explain`) or of a tried one (`dry-run`): routes, transforms, plan. */
  function explanation(ex) {
    const routes = el('ul', {class: 'route-list', 'data-test': 'route-results'}, (ex.routes || []).map((r) =>
      el('li', {'data-route': r.name, 'data-matched': r.matched ? 'true' : 'false'},
        el('span', {class: r.matched ? 'mark-yes' : 'mark-no'}, r.matched ? '✓' : '✗'),
        el('span', null, el('span', {class: 'mono'}, r.name), ' ', badge(r.matched ? 'matched' : 'unmatched', r.matched ? 'matched' : 'not matched')),
        el('span', {class: 'why', 'data-test': 'why'}, r.why || (r.matched ? '' : '—')))));
    if (!(ex.routes || []).length) routes.appendChild(el('li', {class: 'muted'}, 'The source has no routes.'));
    const transforms = (ex.transforms || []).length
      ? el('ul', {'data-test': 'transforms'}, ex.transforms.map((t) => el('li', null, el('span', {class: 'mono'}, t.route), ': ', t.note)))
      : el('p', {class: 'muted small'}, 'No transform notes.');
    const planned = (ex.deliveries || []).map((d) => {
      const req = d.request;
      return el('div', {class: 'delivery', 'data-test': 'planned', 'data-destination': d.destination},
        el('div', {class: 'delivery-head'}, el('div', {class: 'left'},
          el('strong', {class: 'mono'}, d.destination), el('span', {class: 'muted'}, `route ${d.route}`),
          d.after ? el('span', {class: 'muted'}, `after ${d.after}`) : null)),
        req ? [
          el('div', {class: 'mono small', 'data-test': 'planned-url'}, req.url),
          pairs(req.headers).length ? table(['Header', 'Value'], pairs(req.headers).map(([k, v]) => el('tr', null, el('td', {class: 'mono'}, k), el('td', {class: 'mono'}, v)))) : null,
          req.body !== null && req.body !== undefined ? el('details', null, el('summary', null, 'Body'), el('pre', {'data-test': 'planned-body'}, pretty(req.body).text)) : null,
        ] : el('div', {class: 'muted small'}, d.after ? 'Rendered when the step before it is delivered.' : 'No request rendered.'));
    });
    return el('div', null,
      el('h3', null, 'Routes'), routes,
      el('h3', null, 'Transforms'), transforms,
      el('h3', null, 'Planned deliveries'), planned.length ? planned : el('p', {class: 'muted small'}, 'None.'));
  }

  async function pageEvent(ctx, id) {
    const [evR, exR] = await Promise.allSettled([api(`/api/v1/events/${enc(id)}`), api(`/api/v1/events/${enc(id)}/explain`)]);
    if (evR.status === 'rejected') throw evR.reason;
    const ev = evR.value;

    const replayAll = el('button', {id: 'replay-all', type: 'button', class: 'btn', disabled: !ev.deliveries.length}, 'Replay all');
    replayAll.addEventListener('click', async () => {
      const ok = await ask({title: 'Replay every delivery', message: `Send all ${plural(ev.deliveries.length, 'delivery', 'deliveries')} of ${ev.id} again, as the same messages?`, ok: 'Replay all'});
      if (!ok) return;
      await act(ctx, 'replay', async () => `Replayed: ${plural(replayedCount(await api('/api/v1/replay', {method: 'POST', body: {ids: [ev.id]}})), 'delivery', 'deliveries')} queued.`);
      refreshSoon();
    });
    const reroute = el('button', {id: 'reroute', type: 'button', class: 'btn'}, 'Re-route');
    reroute.addEventListener('click', async () => {
      const ok = await ask({title: 'Re-route this event', message: `Run ${ev.id} through the current routes and plan the deliveries they give (new deliveries; the old ones stay as they are)?`, ok: 'Re-route'});
      if (!ok) return;
      await act(ctx, 'reroute', async () => `Re-routed: ${plural(replayedCount(await api('/api/v1/replay', {method: 'POST', body: {reroute: [ev.id]}})), 'delivery', 'deliveries')} planned.`);
      refreshSoon();
    });

    const head = el('div', {class: 'page-head'},
      el('div', null, el('div', {class: 'small'}, el('a', {href: '#/events'}, '← Events')),
        el('h1', null, 'Event ', el('span', {class: 'id', id: 'event-id'}, ev.id))),
      el('div', {class: 'actions'}, replayAll, reroute));

    const bodyText = ev.body !== null && ev.body !== undefined ? ev.body : null;
    const body = bodyText !== null ? pretty(bodyText) : {json: false, text: ev.body_base64 || ''};
    const size = bodyText !== null ? new TextEncoder().encode(bodyText).length : Math.floor(((ev.body_base64 || '').length * 3) / 4);
    const summary = panel(null, {id: 'event-summary'}, kv([
      ['Source', ev.source, {class: 'mono', 'data-test': 'event-source'}],
      ['Received', fmtTime(ev.received_at_ms)],
      ['Routed', ev.routed ? 'yes' : 'no — no route matched'],
      ['Dedupe key', ev.dedupe_key || '—', {class: 'mono'}],
      ['Deliveries', ev.deliveries.map((d) => deliveryBadge(d)), {class: 'badges'}],
      ['Body', `${size} bytes${bodyText === null ? ', binary (base64)' : body.json ? ', JSON' : ''}`],
    ]));

    const headers = panel('Headers', {id: 'event-headers'},
      el('p', {class: 'muted small'}, 'As stored: credentials and signatures were removed at ingress.'),
      table(['Name', 'Value'], ev.headers.map(([k, v]) => el('tr', null, el('td', {class: 'mono nowrap'}, k), el('td', {class: 'mono'}, v))), {id: 'headers-table'}));

    const bodyPanel = panel(null, {id: 'event-body-panel'}, el('details', {id: 'body-details', open: true},
      el('summary', null, `Body${body.json ? ' (JSON, pretty-printed)' : bodyText === null ? ' (base64)' : ''}`),
      el('pre', {id: 'event-body'}, body.text || '(empty)')));

    let routing;
    if (exR.status === 'fulfilled') {
      const ex = exR.value;
      routing = panel('Routing', {id: 'routing'},
        el('p', {class: 'banner banner-info small'}, `Evaluated now against the current config (version ${ex.config_version || '?'}), which may differ from the config the event was routed with when it arrived.`),
        explanation(ex));
    } else {
      if (exR.reason.status === 401) throw exR.reason;
      routing = panel('Routing', {id: 'routing'}, el('p', {class: 'muted'}, `Not available: ${exR.reason.message}`));
    }

    const deliveries = panel('Deliveries and attempts', {id: 'deliveries'},
      ev.deliveries.length ? ev.deliveries.map((d) => deliveryCard(ctx, d)) : el('p', {class: 'muted'}, 'No deliveries: no route matched when the event arrived.'));

    return el('div', {class: 'view', 'data-page': 'event'}, head, el('div', {class: 'grid grid-2'}, summary, headers), deliveries, bodyPanel, routing);
  }

  function deliveryCard(ctx, d) {
    const replay = el('button', {type: 'button', class: 'btn btn-small', 'data-test': 'replay-delivery', 'data-delivery-id': d.id}, 'Replay');
    replay.addEventListener('click', async () => {
      const ok = await ask({title: `Replay delivery ${d.id}`, message: `Send it to ${d.destination} again? It is the same message (webhook-id ${d.msg_id}).`, ok: 'Replay'});
      if (!ok) return;
      await act(ctx, 'replay', async () => `Replayed delivery ${d.id}: ${plural(replayedCount(await api('/api/v1/replay', {method: 'POST', body: {ids: [String(d.id)]}})), 'delivery', 'deliveries')} queued.`);
      refreshSoon();
    });
    const attempts = table(['#', 'Time', 'Status', ['Latency', 'num'], 'Response', 'Error'],
      (d.attempt_log || []).map((a) => el('tr', {'data-attempt': a.n},
        el('td', null, String(a.n)),
        el('td', {class: 'nowrap'}, fmtTime(a.at_ms)),
        el('td', null, a.status_code ? badge(a.status_code < 300 ? 'delivered' : a.status_code < 500 ? 'failed' : 'dead', String(a.status_code)) : '—'),
        el('td', {class: 'num'}, fmtMs(a.latency_ms)),
        el('td', {class: 'mono small'}, a.response || ''),
        el('td', {class: 'small'}, a.error || ''))), {'data-test': 'attempts'});
    return el('div', {class: 'delivery', 'data-delivery-id': d.id, 'data-destination': d.destination, 'data-status': d.status},
      el('div', {class: 'delivery-head'},
        el('div', {class: 'left'},
          el('strong', {class: 'mono'}, d.destination), badge(d.status, d.status, {'data-test': 'delivery-status'}),
          el('span', {class: 'muted'}, `route ${d.route}`), el('span', {class: 'muted', 'data-test': 'attempt-count'}, plural(d.attempts, 'attempt')),
          el('span', {class: 'mono small muted'}, d.msg_id),
          d.status === 'pending' && d.next_at_ms ? el('span', {class: 'muted small'}, `next ${fmtTime(d.next_at_ms)}`) : null,
          d.waiting ? badge('waiting') : null, d.held ? badge('failed', 'holds its key') : null),
        replay),
      d.last_error ? el('div', {class: 'small'}, el('span', {class: 'muted'}, 'Last error: '), d.last_error) : null,
      d.cancelled ? el('div', {class: 'small muted'}, `Cancelled by ${d.cancelled.by}${d.cancelled.reason ? ': ' + d.cancelled.reason : ''}`) : null,
      attempts,
      d.transformed_body !== null && d.transformed_body !== undefined
        ? el('details', null, el('summary', {class: 'small'}, 'Body as sent (after transforms)'), el('pre', null, pretty(d.transformed_body).text))
        : null);
  }

  // ---------------------------------------------------------------------------------------------
  // Destinations

  async function pageDestinations(ctx) {
    const data = await api('/api/v1/destinations');
    const items = data.items || [];
    const rows = items.map((d) => {
      const action = d.paused
        ? el('button', {type: 'button', class: 'btn btn-small', 'data-test': 'resume', 'data-destination': d.name}, 'Resume')
        : el('button', {type: 'button', class: 'btn btn-small btn-danger', 'data-test': 'pause', 'data-destination': d.name}, 'Pause');
      action.addEventListener('click', async () => {
        if (d.paused) {
          if (!(await ask({title: `Resume ${d.name}`, message: `Send ${d.name}'s pending deliveries again?`, ok: 'Resume'}))) return;
          await act(ctx, 'resume', async () => {
            await api(`/api/v1/destinations/${enc(d.name)}/resume`, {method: 'POST', body: {}});
            return `${d.name} resumed.`;
          });
        } else {
          const a = await ask({title: `Pause ${d.name}`, message: 'Its deliveries wait in the store until it is resumed; nothing is dropped.', ok: 'Pause', danger: true, input: {label: 'Reason', placeholder: 'e.g. receiver maintenance'}});
          if (!a) return;
          await act(ctx, 'pause', async () => {
            await api(`/api/v1/destinations/${enc(d.name)}/pause`, {method: 'POST', body: a.value ? {reason: a.value} : {}});
            return `${d.name} paused.`;
          });
        }
      });
      const rate = d.success_rate;
      return el('tr', {'data-destination': d.name, 'data-paused': d.paused ? 'true' : 'false'},
        el('td', {class: 'mono'}, el('strong', null, d.name)),
        el('td', null, d.paused ? badge('paused', 'paused', {'data-test': 'state'}) : badge('active', 'active', {'data-test': 'state'}),
          d.paused && d.pause_reason ? el('div', {class: 'muted small reason', 'data-test': 'pause-reason'}, d.pause_reason) : null),
        el('td', {class: 'num'}, rate === null || rate === undefined ? '—' : badge(rate >= 0.99 ? 'delivered' : rate >= 0.9 ? 'failed' : 'dead', fmtPct(rate)),
          d.attempts_5m !== undefined ? el('div', {class: 'muted small'}, plural(d.attempts_5m, 'attempt')) : null),
        el('td', {class: 'num nowrap'}, `${fmtMs(d.latency_p50_ms)} / ${fmtMs(d.latency_p99_ms)}`),
        el('td', null, badge(d.breaker)),
        el('td', {class: 'small'}, d.rate_limit || '—'),
        el('td', {class: 'num', 'data-test': 'pending'}, String(d.pending)),
        el('td', {class: 'num'}, d.pending ? fmtAge(d.oldest_due_ms) : '—'),
        el('td', {class: 'num', 'data-test': 'dead'}, d.dead ? badge('dead', String(d.dead)) : '0'),
        el('td', {class: 'num'}, String(d.failed)),
        el('td', {class: 'num'}, String(d.held_keys || 0)),
        el('td', null, action));
    });

    const dest = el('select', {id: 'bulk-destination', name: 'destination'}, el('option', {value: ''}, 'all destinations'),
      items.map((d) => el('option', {value: d.name}, `${d.name} (${d.dead} dead)`)));
    const firstDead = items.find((d) => d.dead);
    if (firstDead) dest.value = firstDead.name;
    const since = el('input', {id: 'bulk-since', name: 'since', value: '1d', placeholder: '1h, 2d or RFC 3339', autocomplete: 'off'});
    const bulk = el('form', {id: 'bulk-form', class: 'row'},
      el('div', null, el('label', {for: 'bulk-destination'}, 'Destination'), dest),
      el('div', null, el('label', {for: 'bulk-since'}, 'Dead since'), since),
      el('div', null, el('button', {id: 'bulk-submit', type: 'submit', class: 'btn btn-primary'}, 'Replay dead letters…')));
    bulk.addEventListener('submit', async (e) => {
      e.preventDefault();
      const body = {dead: true};
      if (dest.value) body.destination = dest.value;
      if (since.value.trim()) body.since = since.value.trim();
      let n;
      try {
        n = (await api('/api/v1/replay', {method: 'POST', body: Object.assign({dry_run: true}, body)})).would_replay;
      } catch (err) {
        report(err);
        return;
      }
      if (!n) {
        showNotice('No dead letters match: nothing to replay.');
        return;
      }
      const where = `${dest.value ? ` of ${dest.value}` : ''}${body.since ? ` (dead since ${body.since})` : ''}`;
      if (!(await ask({title: 'Replay dead letters', message: `${plural(n, 'dead letter')}${where} will be replayed.`, ok: `Replay ${n}`}))) return;
      await act(ctx, 'replay dead', async () => `Replayed ${plural(replayedCount(await api('/api/v1/replay', {method: 'POST', body})), 'dead letter')}.`);
      refreshSoon();
    });

    return el('div', {class: 'view', 'data-page': 'destinations'},
      el('div', {class: 'page-head'}, el('div', null, el('h1', null, 'Destinations'), el('div', {class: 'muted'}, 'Health over the last 5 minutes; queues as the store has them now.'))),
      el('section', {class: 'panel'}, table(
        ['Destination', 'State', ['Success', 'num'], ['p50 / p99', 'num'], 'Breaker', 'Rate limit', ['Pending', 'num'], ['Oldest due', 'num'], ['Dead', 'num'], ['Failed', 'num'], ['Held', 'num'], ''],
        rows, {id: 'destinations-table'})),
      panel('Replay dead letters', {id: 'bulk'}, el('p', {class: 'muted small'}, 'Counts first (a dry run), asks, then replays them as the same messages.'), bulk));
  }

  // ---------------------------------------------------------------------------------------------
  // Routes, and trying an event

  function parseHeaderLines(text) {
    const out = [];
    for (const [i, line] of text.split('\n').entries()) {
      if (!line.trim()) continue;
      const c = line.indexOf(':');
      if (c <= 0) throw new Error(`headers, line ${i + 1}: expected "Name: value"`);
      out.push([line.slice(0, c).trim(), line.slice(c + 1).trim()]);
    }
    return out;
  }

  async function pageRoutes(ctx) {
    const data = await api('/api/v1/routes');
    const routes = data.routes || [];
    const sources = [...new Set(routes.map((r) => r.source))].sort();

    const cards = routes.map((r) => el('div', {class: 'route-card', 'data-route': r.name},
      el('div', {class: 'delivery-head'}, el('div', {class: 'left'}, el('h2', {class: 'mono'}, r.name), el('span', {class: 'muted'}, 'from'), badge('pending', r.source))),
      kv([
        ['To', (r.to || []).join(', ') || '—', {class: 'mono'}],
        ['Then', (r.then || []).length ? r.then.map((s) => `${s.destination}${s.after ? ` (after ${s.after})` : ''}`).join(', ') : '—', {class: 'mono'}],
        ['Transforms', (r.transforms || []).length ? r.transforms.join(' → ') : '—', {class: 'mono'}],
      ]),
      el('details', {open: true}, el('summary', {class: 'small'}, 'As written in routes.yaml'), el('pre', {'data-test': 'route-yaml'}, r.yaml || ''))));

    const source = el('select', {id: 'try-source'}, sources.map((s) => el('option', {value: s}, s)));
    const headers = el('textarea', {id: 'try-headers', rows: 4, placeholder: 'Content-Type: application/json\nX-Kind: order', spellcheck: 'false'});
    headers.value = 'Content-Type: application/json\n';
    const body = el('textarea', {id: 'try-body', rows: 6, placeholder: '{"kind": "order"}', spellcheck: 'false'});
    const result = el('div', {id: 'try-result', 'data-test': 'try-result'});
    const run = el('button', {id: 'try-run', type: 'submit', class: 'btn btn-primary'}, 'Try it');
    const form = el('form', {id: 'try-form'},
      el('div', {class: 'stack'},
        el('label', {for: 'try-source'}, 'Source'), source,
        el('label', {for: 'try-headers'}, 'Headers (Name: value, one a line)'), headers,
        el('label', {for: 'try-body'}, 'Body'), body),
      el('div', {class: 'row'}, run, el('span', {class: 'muted small'}, 'Nothing is stored or sent: the event only goes through the routes.')));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      run.disabled = true;
      try {
        const ex = await api('/api/v1/dry-run', {method: 'POST', body: {source: source.value, headers: parseHeaderLines(headers.value), body: body.value}});
        if (ctx.alive()) result.replaceChildren(explanation(ex));
      } catch (err) {
        report(err);
        result.replaceChildren();
      } finally {
        run.disabled = false;
      }
    });

    return el('div', {class: 'view', 'data-page': 'routes'},
      el('div', {class: 'page-head'}, el('div', null, el('h1', null, 'Routes'), el('div', {class: 'muted'}, 'Config version ', el('span', {class: 'mono', id: 'routes-version'}, data.config_version || '?')))),
      el('div', {class: 'grid grid-routes'},
        panel(`${plural(routes.length, 'route')}`, {id: 'route-list'}, cards.length ? cards : el('p', {class: 'muted'}, 'No routes.')),
        panel('Try an event', {id: 'try'}, form, result)));
  }

  // ---------------------------------------------------------------------------------------------
  // Start

  async function boot() {
    $('#login-form').addEventListener('submit', login);
    $('#logout').addEventListener('click', logout);
    $('#error-close').addEventListener('click', () => ($('#error').hidden = true));
    $('#notice-close').addEventListener('click', () => ($('#notice').hidden = true));
    $('#confirm-ok').addEventListener('click', (e) => {
      e.preventDefault();
      answer(true);
    });
    $('#confirm-form').addEventListener('submit', (e) => {
      e.preventDefault();
      answer(true);
    });
    $('#confirm-cancel').addEventListener('click', () => answer(false));
    $('#confirm').addEventListener('cancel', (e) => {
      e.preventDefault();
      answer(false);
    });
    window.addEventListener('hashchange', () => render());

    state.token = sessionStorage.getItem(TOKEN_KEY);
    try {
      enter(await whoami(state.token));
    } catch (e) {
      if (e.status === 401) {
        const had = Boolean(state.token);
        sessionStorage.removeItem(TOKEN_KEY);
        state.token = null;
        showLogin(had ? 'The gateway no longer accepts the saved token (401). Sign in again.' : null);
      } else {
        showLogin(e.message);
      }
    }
  }

  boot();
})();
