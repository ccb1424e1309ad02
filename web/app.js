// parlor's chat page: one WebSocket to the instance that served the page,
// rooms in a sidebar, and the replay contract kept on the client's side:
// each room remembers its epoch and the last id shown, and every reconnect
// rejoins with them, so nothing is missed and nothing is shown twice.
//
// Everything a user or a server sends is put on the page with textContent,
// never as HTML.
'use strict';

const PAGE = 50;
// Typing is sent at most this often while typing, and shown this long.
const TYPING_EVERY_MS = 2500;
const TYPING_SHOWN_MS = 4000;
const $ = (id) => document.getElementById(id);

// With auth on, the page is opened as /#token=…: the token travels with the
// WebSocket, and the server's welcome says who it names.
const TOKEN = new URLSearchParams(location.hash.slice(1)).get('token');

const state = {
  user: localStorage.getItem('parlor.user') || '',
  rooms: new Map(),
  current: null,
  ws: null,
  backoff: 500,
  retryTimer: null,
  refSalt: Date.now().toString(36) + Math.random().toString(36).slice(2, 6),
  nextRef: 1,
};

function room(name) {
  let r = state.rooms.get(name);
  if (!r) {
    r = { name, epoch: null, lastId: 0, messages: [], outgoing: [], more: false,
          loading: false, unread: 0, notice: '', typing: new Map(), present: new Set() };
    state.rooms.set(name, r);
    saveRooms();
  }
  return r;
}

function saveRooms() {
  localStorage.setItem('parlor.rooms', JSON.stringify([...state.rooms.keys()]));
  if (state.current) localStorage.setItem('parlor.current', state.current);
}

// ---- connection -------------------------------------------------------

function setStatus(status) {
  const el = $('status');
  el.dataset.state = status;
  el.textContent = status;
}

function connect() {
  clearTimeout(state.retryTimer);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const auth = TOKEN ? `&token=${encodeURIComponent(TOKEN)}` : '';
  const ws = new WebSocket(`${scheme}://${location.host}/ws?user=${encodeURIComponent(state.user)}${auth}`);
  state.ws = ws;
  ws.onmessage = (event) => {
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    handle(frame);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    setStatus(navigator.onLine ? 'reconnecting' : 'offline');
    // Backoff with jitter, so that a restarted instance is not hit by every
    // client at the same moment.
    const wait = state.backoff * (0.5 + Math.random());
    state.backoff = Math.min(state.backoff * 2, 10000);
    state.retryTimer = setTimeout(connect, wait);
  };
}

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify(frame));
    return true;
  }
  return false;
}

function join(r) {
  // A room seen before resumes after its last id; a new one gets recent history.
  if (r.epoch && r.lastId > 0) {
    send({ type: 'join', room: r.name, since: r.lastId, epoch: r.epoch });
  } else {
    send({ type: 'join', room: r.name, history: PAGE });
  }
}

function handle(frame) {
  const r = frame.room ? state.rooms.get(frame.room) : null;
  switch (frame.type) {
    case 'welcome':
      state.user = frame.user;
      $('me').textContent = frame.user;
      state.backoff = 500;
      setStatus('connected');
      $('instance').textContent = `instance ${frame.instance}`;
      for (const each of state.rooms.values()) {
        join(each);
        // Sends that were never acked go again with their ref: the server
        // stores each once, however often it is asked.
        for (const out of each.outgoing) if (out.state === 'pending') transmit(each, out);
      }
      break;
    case 'joined':
      if (!r) return;
      if (r.epoch && r.epoch !== frame.epoch) {
        // The room's history began again: ids restart, what is shown stays
        // as it was, and new messages follow a marker.
        r.messages.push({ marker: 'The room’s history was reset; messages below are new.' });
        r.lastId = 0;
        if (r.name === state.current) render();
      }
      r.epoch = frame.epoch;
      break;
    case 'presence':
      if (!r) return;
      r.present = new Set(frame.users);
      if (r.name === state.current) renderPresent();
      break;
    case 'member':
      if (!r) return;
      if (frame.event === 'join') r.present.add(frame.user); else r.present.delete(frame.user);
      if (r.name === state.current) renderPresent();
      break;
    case 'typing':
      if (!r) return;
      r.typing.set(frame.user, Date.now() + TYPING_SHOWN_MS);
      if (r.name === state.current) renderTyping();
      break;
    case 'message':
      if (!r) return;
      if (r.typing.delete(frame.user) && r.name === state.current) renderTyping();
      if (frame.id <= r.lastId) return; // shown already
      r.lastId = frame.id;
      r.messages.push(frame);
      if (r.messages.filter((m) => !m.marker).length === 1) r.more = frame.id > 1;
      settle(r, frame.id);
      if (r.name === state.current) appendMessage(frame); else { r.unread++; renderRooms(); }
      break;
    case 'replayed':
      if (!r) return;
      // Who is here now; `member` frames keep it current from then on.
      send({ type: 'presence', room: r.name, ref: `presence-${r.name}` });
      if (frame.truncated) {
        r.notice = 'Some messages you missed are no longer in the room’s history.';
        if (r.name === state.current) renderNotice();
      }
      break;
    case 'history':
      if (!r) return;
      r.loading = false;
      $('loading').hidden = true;
      prependHistory(r, frame.messages, frame.more);
      break;
    case 'ack': {
      const out = r && r.outgoing.find((o) => o.ref === frame.ref);
      if (out) {
        out.id = frame.id;
        out.state = 'sent';
        settle(r, frame.id);
      }
      break;
    }
    case 'error': {
      const out = frame.ref ? findOutgoing(frame.ref) : null;
      if (out) {
        out.state = 'failed';
        out.error = frame.message;
        renderOutgoing();
      } else {
        showNotice(frame.message);
      }
      break;
    }
    case 'left':
      break;
  }
}

function findOutgoing(ref) {
  for (const r of state.rooms.values()) {
    const out = r.outgoing.find((o) => o.ref === ref);
    if (out) return out;
  }
  return null;
}

// An outgoing message leaves the outbox once it is acked and its message
// has arrived (in whichever order the two come).
function settle(r, id) {
  const before = r.outgoing.length;
  r.outgoing = r.outgoing.filter((o) => !(o.state === 'sent' && o.id <= r.lastId));
  if (r.outgoing.length !== before && r.name === state.current) renderOutgoing();
  else if (r.name === state.current && r.outgoing.some((o) => o.id === id)) renderOutgoing();
}

function transmit(r, out) {
  out.state = 'pending';
  send({ type: 'send', room: r.name, text: out.text, ref: out.ref });
}

// ---- rendering --------------------------------------------------------

function messageItem(m) {
  const li = document.createElement('li');
  if (m.marker) {
    li.className = 'marker';
    li.textContent = m.marker;
    return li;
  }
  li.className = 'message' + (m.user === state.user ? ' mine' : '');
  li.dataset.id = m.id;
  li.dataset.room = m.room;
  const head = document.createElement('div');
  head.className = 'head';
  const who = document.createElement('span');
  who.className = 'user';
  who.textContent = m.user;
  const when = document.createElement('time');
  when.dateTime = new Date(m.ts).toISOString();
  when.textContent = new Date(m.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  head.append(who, when);
  const text = document.createElement('div');
  text.className = 'text';
  text.textContent = m.text;
  li.append(head, text);
  return li;
}

function nearBottom() {
  const s = $('scroller');
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

function scrollToBottom() {
  const s = $('scroller');
  s.scrollTop = s.scrollHeight;
}

function appendMessage(m) {
  const stick = nearBottom();
  $('messages').append(messageItem(m));
  if (stick || m.user === state.user) scrollToBottom();
}

function prependHistory(r, messages, more) {
  const older = messages.filter((m) => !r.messages.some((x) => x.id === m.id));
  r.messages = older.concat(r.messages);
  r.more = more;
  if (r.name !== state.current) return;
  const s = $('scroller');
  const fromBottom = s.scrollHeight - s.scrollTop;
  const list = $('messages');
  list.prepend(...older.map(messageItem));
  s.scrollTop = s.scrollHeight - fromBottom;
}

function renderOutgoing() {
  const r = state.rooms.get(state.current);
  const list = $('outgoing');
  list.replaceChildren();
  if (!r) return;
  for (const out of r.outgoing) {
    const li = messageItem({ user: state.user, text: out.text, ts: out.ts });
    li.classList.add(out.state);
    li.dataset.ref = out.ref;
    if (out.state === 'failed') {
      const why = document.createElement('div');
      why.className = 'failure';
      why.textContent = `Not sent: ${out.error || 'no connection'} `;
      const retry = document.createElement('button');
      retry.type = 'button';
      retry.className = 'retry';
      retry.textContent = 'Retry';
      retry.onclick = () => { transmit(r, out); renderOutgoing(); };
      why.append(retry);
      li.append(why);
    }
    list.append(li);
  }
}

function renderPresent() {
  const r = state.rooms.get(state.current);
  const users = r ? [...r.present].sort() : [];
  $('present').textContent = users.length ? `${users.length} here: ${users.join(', ')}` : '';
}

function renderTyping() {
  const r = state.rooms.get(state.current);
  const now = Date.now();
  const names = r ? [...r.typing].filter(([, until]) => until > now).map(([user]) => user) : [];
  $('typing').textContent = names.length === 0 ? ''
    : names.length === 1 ? `${names[0]} is typing…`
    : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]} are typing…`;
  clearTimeout(state.typingTimer);
  if (names.length) state.typingTimer = setTimeout(renderTyping, 1000);
}

function renderNotice() {
  const r = state.rooms.get(state.current);
  const el = $('notice');
  el.textContent = r ? r.notice : '';
  el.hidden = !(r && r.notice);
}

function showNotice(text) {
  const r = state.rooms.get(state.current);
  if (r) r.notice = text;
  renderNotice();
}

function renderRooms() {
  const list = $('rooms');
  list.replaceChildren();
  for (const r of state.rooms.values()) {
    const li = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = `# ${r.name}`;
    button.className = r.name === state.current ? 'active' : '';
    button.onclick = () => select(r.name);
    if (r.unread > 0) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = r.unread;
      button.append(badge);
    }
    li.append(button);
    list.append(li);
  }
}

function render() {
  const r = state.rooms.get(state.current);
  $('room-title').textContent = r ? `# ${r.name}` : '';
  $('messages').replaceChildren(...(r ? r.messages.map(messageItem) : []));
  renderOutgoing();
  renderNotice();
  renderTyping();
  renderPresent();
  renderRooms();
  scrollToBottom();
}

function select(name) {
  state.current = name;
  room(name).unread = 0;
  saveRooms();
  render();
  $('text').focus();
}

// ---- user actions -----------------------------------------------------

function start() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('me').textContent = state.user;
  const saved = JSON.parse(localStorage.getItem('parlor.rooms') || '["general"]');
  for (const name of saved.length ? saved : ['general']) room(name);
  const current = localStorage.getItem('parlor.current');
  select(state.rooms.has(current) ? current : state.rooms.keys().next().value);
  connect();
}

$('login').onsubmit = (event) => {
  event.preventDefault();
  const name = $('name').value.trim();
  if (!name) return;
  state.user = name;
  localStorage.setItem('parlor.user', name);
  start();
};

$('add-room').onsubmit = (event) => {
  event.preventDefault();
  const name = $('room-name').value.trim();
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) return;
  $('room-name').value = '';
  const isNew = !state.rooms.has(name);
  const r = room(name);
  if (isNew) join(r);
  select(name);
};

$('leave').onclick = () => {
  const name = state.current;
  if (!name) return;
  send({ type: 'leave', room: name });
  state.rooms.delete(name);
  saveRooms();
  const next = state.rooms.keys().next().value;
  if (next) select(next); else { state.current = null; render(); }
};

$('composer').onsubmit = (event) => {
  event.preventDefault();
  const r = state.rooms.get(state.current);
  const text = $('text').value;
  if (!r || !text.trim()) return;
  const out = { ref: `${state.refSalt}-${state.nextRef++}`, text, ts: Date.now(), state: 'pending' };
  r.outgoing.push(out);
  // Offline, it stays pending and goes out when the connection is back.
  transmit(r, out);
  $('text').value = '';
  renderOutgoing();
  scrollToBottom();
};

$('text').oninput = () => {
  const now = Date.now();
  if (!state.current || !$('text').value.trim() || now - (state.lastTyping || 0) < TYPING_EVERY_MS) return;
  state.lastTyping = now;
  send({ type: 'typing', room: state.current });
};

$('text').onkeydown = (event) => {
  if (event.key === 'Enter' && !event.shiftKey) {
    event.preventDefault();
    $('composer').requestSubmit();
  }
};

$('scroller').onscroll = () => {
  const r = state.rooms.get(state.current);
  const oldest = r && r.messages.find((m) => !m.marker);
  if (!r || !r.more || r.loading || !oldest || $('scroller').scrollTop > 40) return;
  r.loading = true;
  $('loading').hidden = false;
  send({ type: 'history', room: r.name, before: oldest.id, limit: PAGE });
};

window.addEventListener('online', () => { if (!state.ws) connect(); });
window.addEventListener('offline', () => setStatus('offline'));

if (state.user || TOKEN) start(); else $('login').hidden = false;
