// parlor's chat page, on the client library (`/parlor.js`): the library
// keeps the replay contract (resume with since and epoch, sends stored once,
// messages folded with their edits, deletes and reactions); this file draws
// the rooms and takes what the user does.
//
// Everything a user or a server sends is put on the page with textContent,
// never as HTML.
import { Parlor } from '/parlor.js';

const PAGE = 50;
// At most this many messages are on the page at once; older and newer ones
// come back as the user scrolls.
const WINDOW = 150;
// The server's limit on a message: bytes of UTF-8, not characters.
const LIMIT = 4096;
const bytes = (text) => new TextEncoder().encode(text).length;
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
    v = { divider: null, notice: '', typing: new Map(), unseen: 0 };
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
  $('retry-now').onclick = () => state.chat.retryNow();
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
  if (el.dataset.state === shown) return;
  el.dataset.state = shown;
  el.textContent = shown;
  // An outage says what will happen: messages wait and go once connected.
  if (shown === 'connected') state.everConnected = true;
  $('outage').hidden = shown === 'connected' || (!state.everConnected && shown !== 'offline');
  $('outage-text').textContent = shown === 'offline'
    ? 'You are offline. Messages you send wait here and go when the connection is back.'
    : 'The connection to the server was lost; trying again by itself. Messages you send wait here and go once it is back.';
  renderOutgoing();
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
  renderJump();
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
  const room = state.current && state.chat.rooms.get(state.current);
  // The window is not at the newest messages: draw it there first.
  if (room && !live(room)) return render();
  const s = $('scroller');
  s.scrollTop = s.scrollHeight;
  if (state.current) view(state.current).unseen = 0;
  renderJump();
}

/** The ids of the first and last messages drawn. */
function shownIds() {
  const items = $('messages').querySelectorAll('li.message');
  if (!items.length) return null;
  return [+items[0].dataset.id, +items[items.length - 1].dataset.id];
}

/** Whether the newest message the room holds is drawn. */
function live(room) {
  const all = room.list();
  const ids = shownIds();
  return !ids || !all.length || ids[1] >= all[all.length - 1].id;
}

/** Keeps at most WINDOW messages drawn, removing from the top or the bottom. */
function trim(fromTop) {
  const items = [...$('messages').querySelectorAll('li.message')];
  const extra = items.length - WINDOW;
  if (extra <= 0) return;
  const gone = fromTop ? items.slice(0, extra) : items.slice(items.length - extra);
  for (const li of gone) li.remove();
}

function append(m) {
  const room = state.chat.rooms.get(state.current);
  const stick = nearBottom();
  const v = view(room.name);
  if (m.user !== state.user && (!stick || document.hidden)) v.unseen++;
  const ids = shownIds();
  // Scrolled back past the window's end: it is drawn when scrolled to.
  if (ids && ids[1] < m.id - 1 && room.list().some((o) => o.id > ids[1] && o.id < m.id)) return;
  if (!$('divider') && v.divider !== null && m.id > v.divider && m.user !== state.user && document.hidden) {
    $('messages').append(divider());
  }
  $('messages').append(messageItem(room, m));
  if (stick || m.user === state.user) {
    trim(true);
    scrollToBottom();
  }
}

/** Draws older messages above the window, keeping what is in view in place. */
function prepend(room, messages) {
  const s = $('scroller');
  const fromTop = s.scrollHeight - s.scrollTop;
  const items = messages.sort((a, b) => a.id - b.id).map((m) => messageItem(room, m));
  $('messages').prepend(...items);
  trim(false);
  s.scrollTop = s.scrollHeight - fromTop;
}

/** Draws newer messages below the window (they left it while scrolled up). */
function extend(room) {
  const ids = shownIds();
  if (!ids) return;
  const newer = room.list().filter((m) => m.id > ids[1]).slice(0, PAGE);
  $('messages').append(...newer.map((m) => messageItem(room, m)));
  const s = $('scroller');
  const before = s.scrollHeight - s.scrollTop;
  trim(true);
  s.scrollTop = s.scrollHeight - before;
}

/** The "N new" button, while there are messages below the view. */
function renderJump() {
  const n = state.current ? view(state.current).unseen : 0;
  $('jump').hidden = n === 0;
  $('jump').textContent = `${n} new ↓`;
  $('jump').setAttribute('aria-label', `${n} new message${n === 1 ? '' : 's'}; go to the newest`);
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
  $('room-title').textContent = room ? `# ${room.name}` : 'No room open';
  $('empty').hidden = !!room;
  $('text').disabled = !room;
  $('send').disabled = !room;
  $('leave').hidden = !room;
  const list = $('messages');
  list.replaceChildren();
  if (room) {
    const v = view(room.name);
    v.unseen = 0;
    for (const m of room.list().slice(-WINDOW)) {
      if (v.divider !== null && m.id > v.divider && m.user !== state.user && !$('divider')) list.append(divider());
      list.append(messageItem(room, m));
    }
  }
  renderOutgoing();
  renderNotice();
  renderTyping();
  renderPresent();
  renderRooms();
  renderJump();
  const line = $('divider');
  if (line) line.scrollIntoView({ block: 'center' }); else scrollToBottom();
  if (room) markRead(room);
}

function renderOutgoing() {
  const room = state.chat.rooms.get(state.current);
  const list = $('outgoing');
  list.replaceChildren();
  if (!room) return;
  const focused = list.contains(document.activeElement);
  list.replaceChildren();
  if (!room) return;
  let newlyFailed = null;
  for (const out of room.pending.filter((o) => o.frame.type === 'send')) {
    const li = messageItem(room, { id: 0, user: state.user, text: out.text, ts: out.ts, reactions: {} });
    li.querySelectorAll('.action, .reactions').forEach((e) => e.remove());
    li.classList.add(out.state);
    li.dataset.ref = out.ref;
    if (out.state === 'failed') {
      li.append(failure(room, out));
      if (!out.shown) newlyFailed = li;
      out.shown = true;
    } else if ($('status').dataset.state !== 'connected') {
      const wait = document.createElement('div');
      wait.className = 'waiting';
      wait.textContent = 'Waiting: it goes when the connection is back.';
      li.append(wait);
    }
    list.append(li);
  }
  // A refusal takes the focus to its first way out, in view; a redraw
  // keeps the focus in the outbox or gives it back to the box.
  if (newlyFailed) {
    newlyFailed.scrollIntoView({ block: 'nearest' });
    newlyFailed.querySelector('.failure button').focus();
  } else if (focused && !list.contains(document.activeElement)) {
    $('text').focus();
  }
}

/** Why a send was refused, and the ways out: Retry (where it may help), Edit, Discard. */
function failure(room, out) {
  const why = document.createElement('div');
  why.className = 'failure';
  why.setAttribute('role', 'alert');
  why.textContent = `Not sent: ${out.error ? out.error.message : 'no connection'} `;
  const hopeless = out.error && ['too_large', 'bad_request', 'invalid_name', 'forbidden'].includes(out.error.code);
  if (!hopeless) why.append(button('Retry', 'retry', () => room.retry(out).catch(() => {})));
  why.append(
    button('Edit', 'edit-failed', () => {
      room.discard(out);
      $('text').value = out.text;
      composed();
      $('text').focus();
    }, 'Edit: put the text back in the message box'),
    button('Discard', 'discard', () => { room.discard(out); $('text').focus(); }),
  );
  return why;
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
  const text = names.length === 0 ? ''
    : names.length === 1 ? `${names[0]} is typing…`
    : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]} are typing…`;
  // Written only when it changes, so that a screen reader says it once.
  if ($('typing').textContent !== text) $('typing').textContent = text;
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
  let total = 0;
  for (const room of state.chat.rooms.values()) {
    const li = document.createElement('li');
    const b = document.createElement('button');
    b.type = 'button';
    const name = document.createElement('span');
    name.className = 'room-name';
    const hash = document.createElement('span');
    hash.setAttribute('aria-hidden', 'true');
    hash.textContent = '# ';
    name.append(hash, room.name);
    b.append(name);
    if (room.name === state.current) b.setAttribute('aria-current', 'page');
    b.onclick = () => select(room.name);
    const count = room.name === state.current && !document.hidden ? 0 : unread(room);
    total += unread(room);
    if (count > 0) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      const number = document.createElement('span');
      number.setAttribute('aria-hidden', 'true');
      number.textContent = count;
      const said = document.createElement('span');
      said.className = 'visually-hidden';
      said.textContent = `, ${count} unread`;
      badge.append(number, said);
      b.append(badge);
    }
    li.append(b);
    list.append(li);
  }
  document.title = total > 0 ? `(${total}) parlor` : 'parlor';
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
  (next ? $('text') : $('room-name')).focus();
};

$('jump').onclick = () => { scrollToBottom(); markRead(state.chat.rooms.get(state.current)); renderRooms(); };

$('composer').onsubmit = (event) => {
  event.preventDefault();
  const room = state.chat.rooms.get(state.current);
  const text = $('text').value;
  if (!room || !text.trim()) return;
  // Offline, it waits and goes when the connection is back; stored once.
  if (bytes(text) > LIMIT) {
    composed();
    $('text').focus();
    return;
  }
  room.send(text).catch(() => {});
  $('text').value = '';
  composed();
  renderOutgoing();
  scrollToBottom();
};

/** The box grows with its text, and counts bytes near the limit. */
function composed() {
  const t = $('text');
  t.style.height = 'auto';
  t.style.height = `${t.scrollHeight + 2}px`;
  const n = bytes(t.value);
  const count = $('count');
  count.hidden = n < LIMIT * 0.8;
  count.textContent = n > LIMIT
    ? `${n - LIMIT} bytes too long (the limit is ${LIMIT} bytes)`
    : `${LIMIT - n} bytes left`;
  count.classList.toggle('over', n > LIMIT);
  if (n > LIMIT) t.setAttribute('aria-invalid', 'true'); else t.removeAttribute('aria-invalid');
}

$('text').oninput = () => {
  composed();
  const room = state.chat && state.chat.rooms.get(state.current);
  const now = Date.now();
  if (!room || !$('text').value.trim() || now - state.lastTyping < TYPING_EVERY_MS) return;
  state.lastTyping = now;
  room.typing();
};

$('text').onkeydown = (event) => {
  // An input method's Enter (composing, or key code 229) picks its text; it does not send.
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    $('composer').requestSubmit();
  }
};

$('scroller').onscroll = () => {
  const room = state.chat.rooms.get(state.current);
  if (!room) return;
  markRead(room);
  if (nearBottom()) {
    if (!live(room)) extend(room);
    else if (view(room.name).unseen) { view(room.name).unseen = 0; renderJump(); }
  }
  if ($('scroller').scrollTop > 40) return;
  // Older ones held but not drawn come first; then the server's.
  const ids = shownIds();
  const held = ids ? room.list().filter((m) => m.id < ids[0]) : [];
  if (held.length) return prepend(room, held.slice(-PAGE));
  // Not before the join's replay is in: until then the window's start is
  // not known, and a view not yet filled would ask for a page it will get.
  if (!room.joined || !room.hasOlder() || room.loadingOlder) return;
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

if (state.user || TOKEN) start(); else {
  $('login').hidden = false;
  $('name').focus();
}
