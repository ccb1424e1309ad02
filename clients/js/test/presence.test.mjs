// parlor.js's user list against a scripted server: a fake WebSocket that
// answers as parlor may, with `member` frames and a `presence` answer in
// either order (they travel separately: the answer is read from the store,
// the frames come over the live feed).
//
//   node --test clients/js/test/presence.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Parlor } from '../parlor.js';

/** A socket that records what the client sends and delivers what the test says. */
class ScriptedSocket {
  constructor() {
    this.readyState = 1;
    this.sent = [];
    ScriptedSocket.last = this;
  }

  send(data) { this.sent.push(JSON.parse(data)); }
  addEventListener(type, listener) { if (type === 'close') this.closed = listener; }
  close() {
    this.readyState = 3;
    this.closed?.();
    this.onclose?.();
  }

  deliver(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
}

/** A client joined to `room`, with its presence request sent; returns it and the request. */
function joined(room) {
  const chat = new Parlor({ url: 'ws://scripted', user: 'ana', WebSocket: ScriptedSocket });
  const socket = ScriptedSocket.last;
  socket.deliver({ type: 'welcome', user: 'ana', instance: 'a' });
  const handle = chat.join(room);
  socket.deliver({ type: 'joined', room, epoch: 'e1', head: 0 });
  socket.deliver({ type: 'replayed', room, count: 0, truncated: false });
  const asked = socket.sent.find((frame) => frame.type === 'presence');
  assert.ok(asked, 'the client asks who is here once its replay is done');
  return { chat, socket, room: handle, ref: asked.ref };
}

const settled = () => new Promise((resolve) => setImmediate(resolve));

test('a join that arrives before an older presence answer is kept', async () => {
  const { chat, socket, room, ref } = joined('general');
  socket.deliver({ type: 'member', room: 'general', user: 'ben', event: 'join' });
  socket.deliver({ type: 'presence', room: 'general', ref, users: ['ana'] });
  await settled();
  assert.deepEqual([...room.present].sort(), ['ana', 'ben']);
  chat.close();
});

test('a leave that arrives before an older presence answer is kept', async () => {
  const { chat, socket, room, ref } = joined('general');
  socket.deliver({ type: 'member', room: 'general', user: 'ben', event: 'leave' });
  socket.deliver({ type: 'presence', room: 'general', ref, users: ['ana', 'ben'] });
  await settled();
  assert.deepEqual([...room.present].sort(), ['ana']);
  chat.close();
});

test('member frames after the answer change it, and each user ends as its latest frame says', async () => {
  const { chat, socket, room, ref } = joined('general');
  socket.deliver({ type: 'member', room: 'general', user: 'ben', event: 'join' });
  socket.deliver({ type: 'member', room: 'general', user: 'ben', event: 'leave' });
  socket.deliver({ type: 'presence', room: 'general', ref, users: ['ana', 'ben', 'cid'] });
  await settled();
  assert.deepEqual([...room.present].sort(), ['ana', 'cid']);
  socket.deliver({ type: 'member', room: 'general', user: 'cid', event: 'leave' });
  socket.deliver({ type: 'member', room: 'general', user: 'dan', event: 'join' });
  assert.deepEqual([...room.present].sort(), ['ana', 'dan']);
  chat.close();
});
