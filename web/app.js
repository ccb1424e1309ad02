// parlor's chat page, on the client library (`/parlor.js`): the library
// keeps the replay contract (resume with since and epoch, sends stored once,
// messages folded with their edits, deletes and reactions); this file draws
// the rooms and takes what the user does.
//
// Everything a user or a server sends is put on the page with textContent,
// never as HTML.
import { Parlor } from '/parlor.js';

const PAGE = 50;
// Typing is sent at most this often while typing, and shown this long.
const TYPING_EVERY_MS = 2500;
const TYPING_SHOWN_MS = 4000;
const REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢'];
const $ = (id) => document.getElementById(id);

// With auth on, the page is opened as /#token=…: the token goes with the
// WebSocket, and the server's welcome says who it names. It leaves the
// address bar (and the history) at once.
const TOKEN = new URLSearchParams(location.hash.slice(1)).get('token');
if (TOKEN) history.replaceState(null, '', location.pathname + location.search);
const MODERATOR = TOKEN ? claims(TOKEN).mod === true : false;

const state = {
  user: localStorage.getItem('parlor.user') || '',
  chat: null,
  current: null,
  typing: new Map(),
  lastTyping: 0,
  editing: null,
  // Per room: where the "new messages" line goes, and its unread count.
  views: new Map(),
};

function claims(token) {
  try {
    return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return {};
  }
}

function view(name) {
  let v = state.views.get(name);
  if (!v) {
    v = { divider: null, notice: '', typing: new Map() };
    state.views.set(name, v);
  }
  return v;
}

function saveRooms() {
  localStorage.setItem('parlor.rooms', JSON.stringify([...state.chat.rooms.keys()]));
  if (state.current) localStorage.setItem('parlor.current', state.current);
}

// ---- the connection -----------------------------------------------------

function start() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('me').textContent = state.user;
  const chat = new Parlor({ url: `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}`, user: state.user, token: TOKEN });
  state.chat = chat;
  chat.on('status', ({ status }) => setStatus(status));
  chat.on('welcome', ({ user, instance }) => {
    state.user = user;
    $('me').textContent = user;
    $('instance').textContent = `instance ${instance}`;
  });
  chat.on('joined', ({ room }) => {
    const v = view(room.name);
    if (v.divider === null) v.divider = room.read;
    if (room.name === state.current) render();
    renderRooms();
  });
  chat.on('reset', ({ room }) => {
    view(room.name).notice = 'The room’s history was reset; the messages shown are new.';
    view(room.name).divider = 0;
    if (room.name === state.current) render();
  });
  chat.on('truncated', ({ room }) => {
    view(room.name).notice = 'Some messages you missed are no longer in the room’s history.';
    if (room.name === state.current) renderNotice();
  });
  chat.on('change', ({ room, event, message }) => changed(room, event, message));
  chat.on('pending', ({ room }) => { if (room.name === state.current) renderOutgoing(); });
  chat.on('presence', ({ room }) => { if (room.name === state.current) renderPresent(); });
  chat.on('member', ({ room }) => { if (room.name === state.current) renderPresent(); });
  chat.on('read', ({ room, user }) => {
    if (user === state.user) renderRooms();
  });
  chat.on('typing', ({ room, user }) => {
    view(room.name).typing.set(user, Date.now() + TYPING_SHOWN_MS);
    if (room.name === state.current) renderTyping();
  });
  chat.on('history', ({ room, messages }) => {
    $('loading').hidden = true;
    if (room.name === state.current) prepend(room, messages);
  });
  chat.on('error', (error) => showNotice(error.message));
  const saved = JSON.parse(localStorage.getItem('parlor.rooms') || '["general"]');
  for (const name of saved.length ? saved : ['general']) chat.join(name, { history: PAGE });
  const current = localStorage.getItem('parlor.current');
  select(chat.rooms.has(current) ? current : chat.rooms.keys().next().value);
}

function setStatus(status) {
  const el = $('status');
  const shown = status === 'connecting' ? (navigator.onLine ? 'reconnecting' : 'offline') : status;
  el.dataset.state = shown;
  el.textContent = shown;
}

/** A stored event arrived for `room`: draw what it changed. */
function changed(room, event, message) {
  if (event.type === 'message' && view(room.name).typing.delete(event.user) && room.name === state.current) renderTyping();
  if (room.name !== state.current) {
    renderRooms();
    return;
  }
  if (event.type === 'message') {
    append(message);
  } else if (message) {
    const li = document.querySelector(`#messages li[data-id="${message.id}"]`);
    if (li) li.replaceWith(messageItem(room, message));
  }
  markRead(room);
  renderRooms();
}

// ---- drawing ------------------------------------------------------------

function messageItem(room, m) {
  const li = document.createElement('li');
  const mine = m.user === state.user;
  li.className = 'message' + (mine ? ' mine' : '') + (m.deleted ? ' deleted' : '');
  li.dataset.id = m.id;
  const head = document.createElement('div');
  head.className = 'head';
  const who = document.createElement('span');
  who.className = 'user';
  who.textContent = m.user;
  const when = document.createElement('time');
  when.dateTime = new Date(m.ts).toISOString();
  when.textContent = new Date(m.ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  head.append(who, when);
  if (m.edited && !m.deleted) {
    const edited = document.createElement('span');
    edited.className = 'edited';
    edited.textContent = 'edited';
    edited.title = `edited ${new Date(m.edited).toLocaleString()}`;
    head.append(edited);
  }
  if (!m.deleted) head.append(...actions(room, m, mine));
  const text = document.createElement('div');
  text.className = 'text';
  text.textContent = m.deleted ? 'message deleted' : m.text;
  li.append(head, text);
  if (state.editing && state.editing.id === m.id && !m.deleted) li.append(editor(room, m));
  if (!m.deleted) li.append(reactions(room, m));
  return li;
}

function button(label, className, onclick, title) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = className;
  b.textContent = label;
  if (title) b.setAttribute('aria-label', title);
  b.onclick = onclick;
  return b;
}

/** Edit and Delete for one's own messages, Delete for a moderator's. */
function actions(room, m, mine) {
  const out = [];
  if (mine) out.push(button('Edit', 'action edit', () => { state.editing = { id: m.id }; redraw(room, m); }, `Edit message ${m.id}`));
  if (mine || MODERATOR) {
    out.push(button('Delete', 'action delete', () => {
      if (confirm('Delete this message?')) room.delete(m.id).catch((e) => showNotice(e.message));
    }, `Delete message ${m.id}`));
  }
  return out;
}

function editor(room, m) {
  const form = document.createElement('form');
  form.className = 'editor';
  const input = document.createElement('textarea');
  input.value = m.text;
  input.setAttribute('aria-label', 'Edited text');
  const save = button('Save', 'save', null);
  save.type = 'submit';
  const cancel = button('Cancel', 'cancel', () => { state.editing = null; redraw(room, m); });
  form.append(input, save, cancel);
  form.onsubmit = (event) => {
    event.preventDefault();
    const text = input.value;
    state.editing = null;
    if (text.trim() && text !== m.text) room.edit(m.id, text).catch((e) => showNotice(e.message));
    redraw(room, m);
  };
  input.onkeydown = (event) => {
    if (event.key === 'Escape') cancel.click();
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  };
  setTimeout(() => input.focus(), 0);
  return form;
}

/** A message's reactions: each a button that adds or takes back one's own. */
function reactions(room, m) {
  const row = document.createElement('div');
  row.className = 'reactions';
  for (const [emoji, users] of Object.entries(m.reactions || {})) {
    const mine = users.includes(state.user);
    const b = button(`${emoji} ${users.length}`, 'reaction' + (mine ? ' mine' : ''), () => {
      (mine ? room.unreact(m.id, emoji) : room.react(m.id, emoji)).catch((e) => showNotice(e.message));
    }, `${emoji} by ${users.join(', ')}${mine ? '; take yours back' : '; add yours'}`);
    b.title = users.join(', ');
    b.setAttribute('aria-pressed', mine ? 'true' : 'false');
    row.append(b);
  }
  const picker = document.createElement('details');
  picker.className = 'picker';
  const summary = document.createElement('summary');
  summary.textContent = '+';
  summary.setAttribute('aria-label', `React to message ${m.id}`);
  picker.append(summary);
  for (const emoji of REACTIONS) {
    picker.append(button(emoji, 'pick', () => {
      picker.open = false;
      room.react(m.id, emoji).catch((e) => showNotice(e.message));
    }, `React with ${emoji}`));
  }
  row.append(picker);
  return row;
}

function redraw(room, m) {
  const li = document.querySelector(`#messages li[data-id="${m.id}"]`);
  if (li) li.replaceWith(messageItem(room, room.messages.get(m.id) || m));
}

function divider() {
  const li = document.createElement('li');
  li.className = 'divider';
  li.id = 'divider';
  li.textContent = 'new messages';
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

function append(m) {
  const room = state.chat.rooms.get(state.current);
  const stick = nearBottom();
  const v = view(room.name);
  if (!$('divider') && v.divider !== null && m.id > v.divider && m.user !== state.user && document.hidden) {
    $('messages').append(divider());
  }
  $('messages').append(messageItem(room, m));
  if (stick || m.user === state.user) scrollToBottom();
}

function prepend(room, messages) {
  const s = $('scroller');
  const fromBottom = s.scrollHeight - s.scrollTop;
  const items = messages.sort((a, b) => a.id - b.id).map((m) => messageItem(room, m));
  $('messages').prepend(...items);
  s.scrollTop = s.scrollHeight - fromBottom;
}

function unread(room) {
  return room.list().filter((m) => m.id > room.read && m.user !== state.user && !m.deleted).length;
}

/** Marks what the user sees as read: the room is open, the page visible and at the bottom. */
function markRead(room) {
  if (room.name !== state.current || document.hidden || !nearBottom()) return;
  room.markRead();
}

function render() {
  const room = state.chat.rooms.get(state.current);
  $('room-title').textContent = room ? `# ${room.name}` : '';
  const list = $('messages');
  list.replaceChildren();
  if (room) {
    const v = view(room.name);
    for (const m of room.list()) {
      if (v.divider !== null && m.id > v.divider && m.user !== state.user && !$('divider')) list.append(divider());
      list.append(messageItem(room, m));
    }
  }
  renderOutgoing();
  renderNotice();
  renderTyping();
  renderPresent();
  renderRooms();
  const line = $('divider');
  if (line) line.scrollIntoView({ block: 'center' }); else scrollToBottom();
  if (room) markRead(room);
}

function renderOutgoing() {
  const room = state.chat.rooms.get(state.current);
  const list = $('outgoing');
  list.replaceChildren();
  if (!room) return;
  for (const out of room.pending.filter((o) => o.frame.type === 'send')) {
    const li = messageItem(room, { id: 0, user: state.user, text: out.text, ts: out.ts, reactions: {} });
    li.querySelectorAll('.action, .reactions').forEach((e) => e.remove());
    li.classList.add(out.state);
    li.dataset.ref = out.ref;
    if (out.state === 'failed') {
      const why = document.createElement('div');
      why.className = 'failure';
      why.setAttribute('role', 'alert');
      why.textContent = `Not sent: ${out.error ? out.error.message : 'no connection'} `;
      why.append(
        button('Retry', 'retry', () => room.retry(out).catch(() => {})),
        button('Discard', 'discard', () => room.discard(out)),
      );
      li.append(why);
    }
    list.append(li);
  }
}

function renderPresent() {
  const room = state.chat.rooms.get(state.current);
  const users = room ? [...room.present].sort() : [];
  $('present').textContent = users.length ? `${users.length} here: ${users.join(', ')}` : '';
}

function renderTyping() {
  const now = Date.now();
  const typing = state.current ? view(state.current).typing : new Map();
  const names = [...typing].filter(([, until]) => until > now).map(([user]) => user);
  $('typing').textContent = names.length === 0 ? ''
    : names.length === 1 ? `${names[0]} is typing…`
    : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]} are typing…`;
  clearTimeout(state.typingTimer);
  if (names.length) state.typingTimer = setTimeout(renderTyping, 1000);
}

function renderNotice() {
  const text = state.current ? view(state.current).notice : '';
  $('notice-text').textContent = text;
  $('notice').hidden = !text;
}

function showNotice(text) {
  if (state.current) view(state.current).notice = text;
  renderNotice();
}

function renderRooms() {
  const list = $('rooms');
  list.replaceChildren();
  for (const room of state.chat.rooms.values()) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    const name = document.createElement('span');
    name.textContent = `# ${room.name}`;
    b.append(name);
    if (room.name === state.current) b.setAttribute('aria-current', 'page');
    b.onclick = () => select(room.name);
    const count = room.name === state.current && !document.hidden ? 0 : unread(room);
    if (count > 0) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = count;
      badge.setAttribute('aria-label', `${count} unread`);
      b.append(badge);
    }
    li.append(b);
    list.append(li);
  }
}

function select(name) {
  state.current = name;
  state.editing = null;
  const room = state.chat.rooms.get(name);
  // The line goes where the user stopped reading this room.
  if (room && room.epoch) view(name).divider = room.read;
  saveRooms();
  render();
  $('text').focus();
}

// ---- what the user does -------------------------------------------------

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
  state.chat.join(name, { history: PAGE });
  select(name);
};

$('leave').onclick = () => {
  const room = state.chat.rooms.get(state.current);
  if (!room) return;
  room.leave();
  state.views.delete(room.name);
  const next = state.chat.rooms.keys().next().value;
  state.current = next || null;
  saveRooms();
  render();
};

$('composer').onsubmit = (event) => {
  event.preventDefault();
  const room = state.chat.rooms.get(state.current);
  const text = $('text').value;
  if (!room || !text.trim()) return;
  // Offline, it waits and goes when the connection is back; stored once.
  room.send(text).catch(() => {});
  $('text').value = '';
  renderOutgoing();
  scrollToBottom();
};

$('text').oninput = () => {
  const room = state.chat && state.chat.rooms.get(state.current);
  const now = Date.now();
  if (!room || !$('text').value.trim() || now - state.lastTyping < TYPING_EVERY_MS) return;
  state.lastTyping = now;
  room.typing();
};

$('text').onkeydown = (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $('composer').requestSubmit();
  }
};

$('scroller').onscroll = () => {
  const room = state.chat.rooms.get(state.current);
  if (!room) return;
  markRead(room);
  if (!room.hasOlder() || room.loadingOlder || $('scroller').scrollTop > 40) return;
  room.loadingOlder = true;
  $('loading').hidden = false;
  room.older(PAGE).finally(() => { room.loadingOlder = false; });
};

$('dismiss').onclick = () => {
  if (state.current) view(state.current).notice = '';
  renderNotice();
};

document.addEventListener('visibilitychange', () => {
  const room = state.chat && state.chat.rooms.get(state.current);
  if (room && !document.hidden) {
    markRead(room);
    renderRooms();
  }
});

window.addEventListener('online', () => state.chat && state.chat.retryNow());
window.addEventListener('offline', () => setStatus('offline'));

if (state.user || TOKEN) start(); else $('login').hidden = false;
