// The web terminal: xterm.js speaking the sandbox API's PTY protocol
// (POST /api/v1/pty, then the WebSocket at /api/v1/pty/{id}/ws). The
// session's id and token live in this tab's sessionStorage, so a reload
// or a dropped network reattaches to the same shell, whose kept output
// the agent replays after READY. The login cookie is sent by the
// browser; this script never sees it or the API key.
'use strict';

const OP_DATA = 0, OP_RESIZE = 1, OP_READY = 2, OP_EXIT = 3;
const STORE = 'tl-pty-session';
const MAX_RETRY_MS = 10000;

const statusEl = document.getElementById('status');
const newShell = document.getElementById('new-shell');
const term = new Terminal({ cursorBlink: true, scrollback: 5000, allowProposedApi: false });
const fit = new FitAddon.FitAddon();
term.loadAddon(fit);
term.loadAddon(new WebLinksAddon.WebLinksAddon());
term.open(document.getElementById('terminal'));
fit.fit();
window.tlTerm = term; // for tests and the console: read term.buffer

const encoder = new TextEncoder();
let ws = null;
let retryMs = 500;
let retryTimer = null;

function status(text) { statusEl.textContent = text; }

function frame(op, payload) {
  const buf = new Uint8Array(1 + payload.length);
  buf[0] = op;
  buf.set(payload, 1);
  return buf;
}

function resizeFrame() {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint16(0, term.cols);
  new DataView(b.buffer).setUint16(2, term.rows);
  return frame(OP_RESIZE, b);
}

function send(buf) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(buf);
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  if (resp.status === 401) {
    document.getElementById('login').hidden = false;
    status('not logged in');
    throw new Error('login needed');
  }
  return resp;
}

async function createSession() {
  const shell = new URLSearchParams(location.search).get('shell') || '/bin/bash';
  const resp = await api('POST', '/api/v1/pty', {
    command: shell, args: shell.endsWith('bash') ? ['-l'] : [],
    rows: term.rows, cols: term.cols,
  });
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error || 'cannot start a shell: ' + resp.status);
  const s = { id: body.session_id, token: body.token };
  sessionStorage.setItem(STORE, JSON.stringify(s));
  return s;
}

function showExit(code) {
  sessionStorage.removeItem(STORE);
  term.write('\r\n\x1b[1m[the shell exited with code ' + code + ']\x1b[0m\r\n');
  status('exited with code ' + code);
  newShell.hidden = false;
}

function attach(s) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = proto + '//' + location.host + '/api/v1/pty/' + encodeURIComponent(s.id) +
    '/ws?token=' + encodeURIComponent(s.token);
  const sock = new WebSocket(url);
  let ended = false;
  ws = sock;
  sock.binaryType = 'arraybuffer';
  sock.onopen = () => {
    retryMs = 500;
    // The replay after READY redraws the screen from the kept output.
    term.reset();
    sock.send(resizeFrame());
    sock.send(new Uint8Array([OP_READY]));
    status('connected');
  };
  sock.onmessage = (ev) => {
    const b = new Uint8Array(ev.data);
    if (b[0] === OP_DATA) term.write(b.subarray(1));
    if (b[0] === OP_EXIT) {
      ended = true;
      showExit(new DataView(b.buffer, b.byteOffset + 1, 4).getInt32(0));
    }
  };
  sock.onclose = (ev) => {
    if (ws !== sock || ended) return;
    ws = null;
    if (ev.code === 1001) {
      sessionStorage.removeItem(STORE);
      status('session terminated');
      newShell.hidden = false;
      return;
    }
    status('disconnected; reconnecting…');
    retryTimer = setTimeout(() => reattach(s), retryMs);
    retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
  };
}

// reattach asks whether the session still lives before each try: a
// WebSocket that fails tells the page nothing about why.
async function reattach(s) {
  try {
    const resp = await api('GET', '/api/v1/pty/' + encodeURIComponent(s.id));
    if (resp.status === 404) {
      sessionStorage.removeItem(STORE);
      status('the session is gone');
      newShell.hidden = false;
      return;
    }
    if (resp.ok) {
      const info = await resp.json();
      if (!info.is_alive) {
        showExit(info.exit_code);
        return;
      }
    }
  } catch (e) {
    if (e.message === 'login needed') return;
    // The network is down: try again later.
  }
  attach(s);
}

async function start() {
  clearTimeout(retryTimer);
  newShell.hidden = true;
  term.reset();
  try {
    const saved = sessionStorage.getItem(STORE);
    if (saved) {
      reattach(JSON.parse(saved));
    } else {
      attach(await createSession());
    }
  } catch (e) {
    if (e.message !== 'login needed') status(e.message);
  }
}

term.onData((d) => send(frame(OP_DATA, encoder.encode(d))));
term.onBinary((d) => send(frame(OP_DATA, Uint8Array.from(d, (c) => c.charCodeAt(0)))));
term.onResize(() => send(resizeFrame()));
window.addEventListener('resize', () => fit.fit());
newShell.addEventListener('click', start);

// Ctrl+Shift+C copies the selection (Ctrl+C is the shell's); pasting
// (Ctrl+Shift+V, Ctrl+V, the menu) is the browser's paste, which xterm.js
// takes as input.
term.attachCustomKeyEventHandler((ev) => {
  if (ev.type === 'keydown' && ev.ctrlKey && ev.shiftKey && ev.code === 'KeyC') {
    if (term.hasSelection()) navigator.clipboard.writeText(term.getSelection()).catch(() => {});
    return false;
  }
  return true;
});

start();
