// parlor.js: a client for parlor chat servers, for browsers and Node 20 or
// later, in one ES module with no build step and no dependency.
//
// It keeps parlor's promise on the client's side: every room remembers its
// epoch and last id and is resumed with them after any reconnect, to any
// instance; every send has a ref no other client makes, and one not acked
// yet is sent again, with the same ref, after a reconnect, so it is stored
// exactly once; each room's messages are kept folded (edits, deletes,
// reactions applied), from replays and live events alike.
//
//   import { Parlor } from './parlor.js';
//   const chat = new Parlor({ url: 'ws://localhost:8082', user: 'alice' });
//   const room = chat.join('general');
//   chat.on('message', ({ room, message }) => console.log(message.user, message.text));
//   await room.send('hello');
//
// README.md beside this file has the whole API; parlor.d.ts its types.

const STORED = new Set(['message', 'edit', 'delete', 'reaction']);
const BACKOFF_MIN = 500;
const BACKOFF_MAX = 10000;
// How long a connection may take to be welcomed.
const CONNECT_TIMEOUT = 10000;
// Errors after which a send is tried again with its ref, not given up.
const RETRIED = new Set(['unavailable']);

/** An error the server answered a request with. */
export class ParlorError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ParlorError';
    this.code = code;
  }
}

/** A connection to parlor: one WebSocket, kept open, and the rooms joined. */
export class Parlor extends EventTarget {
  /**
   * @param {object} options
   * @param {string|string[]} options.url  the instance, or several: a
   *   reconnect goes to another one of them
   * @param {string} [options.user]  the name to use on an open server
   * @param {string} [options.token]  the token, on a server with auth
   * @param {typeof WebSocket} [options.WebSocket]  where there is no global one
   */
  constructor(options) {
    super();
    this.urls = [].concat(options.url).map((u) => u.replace(/\/+$/, ''));
    this.user = options.user || '';
    this.token = options.token || '';
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new Error('no WebSocket here: pass one as options.WebSocket');
    this.rooms = new Map();
    /** 'connecting', 'connected' or 'offline' */
    this.status = 'connecting';
    this.instance = null;
    this.ws = null;
    this.backoff = BACKOFF_MIN;
    this.closed = false;
    this.next = 0;
    // Requests waiting for their answer, by ref.
    this.waiting = new Map();
    this.connect(Math.floor(Math.random() * this.urls.length));
  }

  /** Calls `handler(detail)` on every event of `type`; returns a function that stops it. */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Joins a room (or returns it, joined already). */
  join(name, { history = 50 } = {}) {
    let room = this.rooms.get(name);
    if (!room) {
      room = new Room(this, name, history);
      this.rooms.set(name, room);
      room.rejoin();
    }
    return room;
  }

  /** Closes the connection for good. */
  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.setStatus('offline');
  }

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.emit('status', { status });
  }

  ref() {
    return `${randomId()}-${++this.next}`;
  }

  connect(index) {
    this.index = index % this.urls.length;
    const query = new URLSearchParams();
    if (this.user) query.set('user', this.user);
    // The token rides in the handshake as a sub-protocol, not in the URL,
    // so that no access log records it.
    const protocols = this.token ? ['parlor', `parlor.token.${this.token}`] : [];
    const ws = new this.WebSocket(`${this.urls[this.index]}/ws?${query}`, protocols);
    this.ws = ws;
    ws.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      this.receive(frame);
    };
    ws.onclose = () => this.lost(ws);
    // A connection that is not welcomed in time is given up, whatever the
    // socket still waits for.
    const watchdog = setTimeout(() => {
      if (this.ws === ws && this.status !== 'connected') {
        try { ws.close(); } catch { /* closing anyway */ }
        this.lost(ws);
      }
    }, CONNECT_TIMEOUT);
    ws.addEventListener('close', () => clearTimeout(watchdog));
  }

  /** The connection `ws` is gone: reconnect, after a backoff, elsewhere. */
  lost(ws) {
    if (this.ws !== ws) return;
    this.ws = null;
    for (const room of this.rooms.values()) room.joined = false;
    if (this.closed) return;
    this.setStatus('connecting');
    // Backoff with jitter, so that a restarted instance is not hit by every
    // client at the same moment; another instance next time.
    const wait = this.backoff * (0.5 + Math.random());
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX);
    this.timer = setTimeout(() => this.connect(this.index + 1), wait);
  }

  /** Reconnects now instead of waiting out the backoff. */
  retryNow() {
    if (this.ws || this.closed) return;
    clearTimeout(this.timer);
    this.connect(this.index + 1);
  }

  /** Sends a frame now if the connection is open; returns whether it was. */
  transmit(frame) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Sends a request and resolves with its answer (or rejects with its error). */
  request(frame) {
    const ref = frame.ref || this.ref();
    return new Promise((resolve, reject) => {
      this.waiting.set(ref, { resolve, reject });
      if (!this.transmit({ ...frame, ref })) {
        this.waiting.delete(ref);
        reject(new ParlorError('unavailable', 'not connected'));
      }
    });
  }

  receive(frame) {
    const room = frame.room && this.rooms.get(frame.room);
    if (frame.type === 'welcome') return this.welcome(frame);
    if (frame.type === 'error' || frame.type === 'ack' || frame.type === 'history' || frame.type === 'presence') {
      const waiting = frame.ref && this.waiting.get(frame.ref);
      if (waiting) {
        this.waiting.delete(frame.ref);
        if (frame.type === 'error') waiting.reject(new ParlorError(frame.code, frame.message));
        else waiting.resolve(frame);
        return;
      }
      if (frame.type === 'error') this.emit('error', new ParlorError(frame.code, frame.message));
    }
    if (room) room.receive(frame);
  }

  welcome(frame) {
    this.user = frame.user;
    this.instance = frame.instance;
    this.backoff = BACKOFF_MIN;
    this.setStatus('connected');
    this.emit('welcome', { user: frame.user, instance: frame.instance });
    for (const room of this.rooms.values()) room.rejoin();
  }
}

/** One joined room: its folded messages, where it stands, and what is on its way. */
export class Room {
  constructor(chat, name, history) {
    this.chat = chat;
    this.name = name;
    this.history = history;
    /** The room's epoch: its ids mean something only within it. */
    this.epoch = null;
    /** The last id seen: a rejoin asks for what came after it. */
    this.lastId = 0;
    /** The room's last id when joined, and this user's read marker. */
    this.head = 0;
    this.read = 0;
    /** Read markers of others, by user, as they are told. */
    this.markers = new Map();
    /** Messages by id, with edits, deletes and reactions applied. */
    this.messages = new Map();
    /** Whether history has older messages than those held, once asked. */
    this.more = null;
    /** Users present, as last told. */
    this.present = new Set();
    /** Member frames that came while a presence answer was on its way. */
    this.meanwhile = null;
    /** Sends not acked yet, oldest first: {ref, text, ts, state, error}. */
    this.pending = [];
    this.joined = false;
    this.left = false;
  }

  emit(type, detail) {
    this.chat.emit(type, { room: this, ...detail });
  }

  rejoin() {
    // Once the room's epoch is known, a rejoin asks for everything after the
    // last id seen, even none: what came while away is not lost.
    const frame = { type: 'join', room: this.name };
    if (this.epoch) Object.assign(frame, { since: this.lastId, epoch: this.epoch });
    else frame.history = this.history;
    if (!this.chat.transmit(frame)) return;
    // Sends not acked go again, with their refs: each is stored once.
    for (const out of this.pending) if (out.state !== 'failed') this.transmit(out);
  }

  receive(frame) {
    if (STORED.has(frame.type)) return this.stored(frame);
    switch (frame.type) {
      case 'joined': return this.joinedFrame(frame);
      case 'replayed':
        this.joined = true;
        this.emit('replayed', { count: frame.count, truncated: frame.truncated });
        if (frame.truncated) this.emit('truncated', {});
        return this.askPresence();
      case 'member':
        if (this.meanwhile) this.meanwhile.push(frame);
        this.applyMember(frame);
        return this.emit('member', { user: frame.user, event: frame.event });
      case 'typing': return this.emit('typing', { user: frame.user });
      case 'read':
        if (frame.user === this.chat.user) this.read = Math.max(this.read, frame.id);
        else this.markers.set(frame.user, frame.id);
        return this.emit('read', { user: frame.user, id: frame.id });
      case 'left': return;
    }
  }

  // Who is here now; `member` frames keep it current. The answer is read
  // from the store and member frames come over the live feed, so a frame
  // can arrive before an answer read earlier than the change it tells:
  // those that arrive while the answer is on its way are applied again on
  // top of it, and each user ends as its latest frame says.
  askPresence() {
    const meanwhile = [];
    this.meanwhile = meanwhile;
    const done = () => { if (this.meanwhile === meanwhile) this.meanwhile = null; };
    this.chat.request({ type: 'presence', room: this.name }).then((answer) => {
      // A later request's answer is newer than this one.
      if (this.meanwhile !== meanwhile) return;
      done();
      this.present = new Set(answer.users);
      for (const frame of meanwhile) this.applyMember(frame);
      this.emit('presence', { users: [...this.present] });
    }, done);
  }

  applyMember(frame) {
    if (frame.event === 'join') this.present.add(frame.user); else this.present.delete(frame.user);
  }

  joinedFrame(frame) {
    if (this.epoch && this.epoch !== frame.epoch) {
      // The room's history began again: ids start afresh.
      const old = this.messages;
      this.messages = new Map();
      this.lastId = 0;
      this.markers = new Map();
      this.emit('reset', { epoch: frame.epoch, old });
    }
    const same = this.epoch === frame.epoch;
    this.epoch = frame.epoch;
    this.head = frame.head || 0;
    this.read = Math.max(frame.read || 0, same ? this.read : 0);
    this.emit('joined', { epoch: frame.epoch, head: this.head, read: this.read });
  }

  /** A stored event, live or replayed: applied once, in id order. */
  stored(frame) {
    if (frame.id <= this.lastId) return;
    this.lastId = frame.id;
    this.head = Math.max(this.head, frame.id);
    const target = this.apply(frame);
    for (const out of this.pending) if (out.id === frame.id) this.settle(out);
    this.emit(frame.type, { event: frame, message: target });
    this.emit('change', { event: frame, message: target });
  }

  /** Folds an event into the messages; returns the message it concerns. */
  apply(frame) {
    if (frame.type === 'message') {
      const message = { ...frame, reactions: { ...(frame.reactions || {}) } };
      this.messages.set(frame.id, message);
      return message;
    }
    const message = this.messages.get(frame.target);
    if (!message) return null;
    if (frame.type === 'edit') Object.assign(message, { text: frame.text, edited: frame.ts });
    if (frame.type === 'delete') Object.assign(message, { text: '', deleted: true });
    if (frame.type === 'reaction') {
      const users = new Set(message.reactions[frame.emoji] || []);
      if (frame.on) users.add(frame.user); else users.delete(frame.user);
      if (users.size) message.reactions[frame.emoji] = [...users].sort();
      else delete message.reactions[frame.emoji];
    }
    return message;
  }

  /** Messages held, oldest first. */
  list() {
    return [...this.messages.values()].sort((a, b) => a.id - b.id);
  }

  /** Whether older messages may be in history: `older()` would get them. */
  hasOlder() {
    if (this.more !== null) return this.more;
    const oldest = this.list()[0];
    return Boolean(oldest && oldest.id > 1);
  }

  transmit(out) {
    out.state = 'pending';
    this.chat.transmit(out.frame);
  }

  settle(out) {
    this.pending = this.pending.filter((o) => o !== out);
    this.emit('pending', { pending: this.pending });
  }

  /**
   * Sends an event (a message by default); resolves with the ack once it is
   * stored. Offline, it waits and goes when the connection is back; it is
   * stored once, however often it is sent.
   */
  append(frame, text = '') {
    const ref = this.chat.ref();
    const out = { ref, text, ts: Date.now(), state: 'pending', frame: { ...frame, room: this.name, ref } };
    const done = new Promise((resolve, reject) => { out.resolve = resolve; out.reject = reject; });
    this.pending.push(out);
    this.chat.waiting.set(ref, {
      resolve: (ack) => this.acked(out, ack),
      reject: (error) => this.refused(out, error),
    });
    if (this.joined || frame.type !== 'send') this.transmit(out);
    this.emit('pending', { pending: this.pending });
    return done;
  }

  acked(out, ack) {
    out.id = ack.id;
    out.resolve(ack);
    // A message leaves `pending` once it has arrived; anything else at once.
    if (out.frame.type !== 'send' || ack.id === null || ack.id <= this.lastId) this.settle(out);
  }

  refused(out, error) {
    if (RETRIED.has(error.code)) {
      // The store did not answer: the same ref again, a little later.
      this.chat.waiting.set(out.ref, { resolve: (ack) => this.acked(out, ack), reject: (e) => this.refused(out, e) });
      setTimeout(() => this.transmit(out), 1000);
      return;
    }
    out.state = 'failed';
    out.error = error;
    out.reject(error);
    this.emit('pending', { pending: this.pending });
  }

  /** Sends a failed send again, with its ref. */
  retry(out) {
    if (out.state !== 'failed') return out;
    this.chat.waiting.set(out.ref, { resolve: (ack) => this.acked(out, ack), reject: (e) => this.refused(out, e) });
    const done = new Promise((resolve, reject) => { out.resolve = resolve; out.reject = reject; });
    this.transmit(out);
    this.emit('pending', { pending: this.pending });
    return done;
  }

  /** Gives up a failed send. */
  discard(out) {
    this.chat.waiting.delete(out.ref);
    this.settle(out);
  }

  send(text) { return this.append({ type: 'send', text }, text); }
  edit(id, text) { return this.append({ type: 'edit', id, text }); }
  delete(id) { return this.append({ type: 'delete', id }); }
  react(id, emoji) { return this.append({ type: 'react', id, emoji }); }
  unreact(id, emoji) { return this.append({ type: 'unreact', id, emoji }); }

  /** Marks the room read up to `id` (the last id seen by default). */
  markRead(id = this.lastId) {
    if (id <= this.read) return;
    this.read = id;
    this.chat.transmit({ type: 'read', room: this.name, id });
  }

  /** Tells the others that this user is typing. */
  typing() {
    this.chat.transmit({ type: 'typing', room: this.name });
  }

  /** Loads older messages than those held; resolves with them. */
  async older(limit = 50) {
    const oldest = this.list()[0];
    const frame = { type: 'history', room: this.name, limit };
    if (oldest) frame.before = oldest.id;
    const answer = await this.chat.request(frame);
    // Older messages come folded as they are now; the events among them are
    // in that state already.
    const older = answer.messages.filter((m) => m.type === 'message' && !this.messages.has(m.id));
    for (const message of older) this.messages.set(message.id, { ...message, reactions: { ...(message.reactions || {}) } });
    this.more = answer.more;
    this.emit('history', { messages: older, more: answer.more });
    return older;
  }

  /** Leaves the room. */
  leave() {
    this.left = true;
    this.chat.rooms.delete(this.name);
    this.chat.transmit({ type: 'leave', room: this.name });
  }
}

function randomId() {
  if (globalThis.crypto && globalThis.crypto.randomUUID) return globalThis.crypto.randomUUID();
  return Array.from({ length: 4 }, () => Math.random().toString(36).slice(2, 10)).join('');
}
