// parlor.js against real parlor instances over one Redis, each started
// here on free ports: resuming on another instance, a send made while
// offline stored once, 200 clients dropped and reconnecting while messages
// flow, and folded state that ends where the server's is.
//
//   node --experimental-websocket --test clients/js/test/
//
// PARLOR_BIN names the parlor binary (default target/debug/parlor, which
// `make test` builds); redis-server must be installed.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { Parlor } from '../parlor.js';

const BIN = process.env.PARLOR_BIN || new URL('../../../target/debug/parlor', import.meta.url).pathname;
const children = [];
after(() => { for (const child of children) child.kill('SIGKILL'); });

function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => { const { port } = server.address(); server.close(() => resolve(port)); });
  });
}

async function until(what, condition, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function redis() {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  children.push(child);
  await until('redis-server', () => {
    try { return execFileSync('redis-cli', ['-p', String(port), 'ping']).toString().trim() === 'PONG'; } catch { return false; }
  });
  return `redis://127.0.0.1:${port}`;
}

/** A parlor instance; resolves once it listens. */
function parlor(args, port = 0) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, ['--port', String(port), '--bind', '127.0.0.1', '--log-format', 'text', '--rate', '100000', '--burst', '100000', ...args]);
    children.push(child);
    let output = '';
    const found = (chunk) => {
      output += chunk;
      const match = output.match(/listening on http:\/\/(\S+)/);
      if (match) resolve({ child, addr: match[1], url: `ws://${match[1]}` });
    };
    child.stdout.on('data', found);
    child.stderr.on('data', found);
    child.on('exit', (code) => reject(new Error(`parlor exited with ${code}: ${output}`)));
  });
}

async function post(addr, room, text) {
  const response = await fetch(`http://${addr}/rooms/${room}/messages?user=bot`, { method: 'POST', body: text });
  const body = await response.text();
  assert.equal(response.status, 201, body);
  return JSON.parse(body).id;
}

async function history(addr, room) {
  const response = await fetch(`http://${addr}/rooms/${room}/messages?since=0&limit=1000`);
  return (await response.json()).messages;
}

/** A client that records every stored event it is told of. */
function client(urls, user) {
  const chat = new Parlor({ url: urls, user });
  chat.seen = [];
  chat.on('change', ({ event }) => chat.seen.push(event.id));
  return chat;
}

test('a client resumes on another instance and misses nothing', async () => {
  const url = await redis();
  const a = await parlor(['--redis', url]);
  const b = await parlor(['--redis', url]);
  const chat = client([a.url], 'ana');
  chat.urls.push(b.url);
  const room = chat.join('resume', { history: 0 });
  await until('joined', () => room.joined);
  await post(b.addr, 'resume', 'one');
  await until('one', () => room.lastId === 1);
  a.child.kill('SIGKILL');
  for (let i = 2; i <= 5; i++) await post(b.addr, 'resume', `m${i}`);
  await until('the rest, on the other instance', () => room.lastId === 5);
  assert.equal(chat.instance !== null, true);
  assert.deepEqual(chat.seen, [1, 2, 3, 4, 5]);
  assert.deepEqual(room.list().map((m) => m.text), ['one', 'm2', 'm3', 'm4', 'm5']);
  chat.close();
});

test('a send made while offline is stored once', async () => {
  const url = await redis();
  const port = await freePort();
  let a = await parlor(['--redis', url], port);
  const chat = client([a.url], 'ben');
  const room = chat.join('offline', { history: 0 });
  await until('joined', () => room.joined);
  a.child.kill('SIGTERM');
  await until('offline', () => chat.status !== 'connected');
  const acked = room.send('sent while offline');
  assert.equal(room.pending.length, 1);
  a = await parlor(['--redis', url], port);
  const ack = await acked;
  assert.equal(ack.id, 1);
  await until('the message back', () => room.lastId === 1);
  const stored = await history(a.addr, 'offline');
  assert.deepEqual(stored.map((m) => m.text), ['sent while offline']);
  assert.equal(room.pending.length, 0);
  chat.close();
});

test('200 clients dropped at random while messages flow lose nothing', async () => {
  const url = await redis();
  const a = await parlor(['--redis', url]);
  const b = await parlor(['--redis', url]);
  const clients = Array.from({ length: 200 }, (_, n) => client(n % 2 ? [a.url, b.url] : [b.url, a.url], `u${n}`));
  const rooms = clients.map((chat) => chat.join('storm', { history: 0 }));
  await until('everyone joined', () => rooms.every((room) => room.joined), 60000);
  const total = 150;
  let drops = 0;
  for (let i = 1; i <= total; i++) {
    await post(i % 2 ? a.addr : b.addr, 'storm', `m${i}`);
    // Drop a few connections without a close frame's goodbye: they come
    // back, on either instance, with their since.
    for (let k = 0; k < 3; k++) {
      const chat = clients[Math.floor(Math.random() * clients.length)];
      if (chat.ws && chat.ws.readyState === 1) { chat.ws.close(); drops++; }
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  await until('every client has every message', () => rooms.every((room) => room.lastId === total), 60000);
  const expected = Array.from({ length: total }, (_, i) => i + 1);
  for (const chat of clients) assert.deepEqual(chat.seen, expected, `${chat.user}: each once, in order`);
  console.log(`STORM: 200 clients, ${total} messages, ${drops} drops, ${200 * total} deliveries, lost 0, duplicated 0`);
  for (const chat of clients) chat.close();
});

test('folded state ends where the server is, for a client that was away', async () => {
  const url = await redis();
  const a = await parlor(['--redis', url]);
  const b = await parlor(['--redis', url]);
  const ana = client([a.url], 'ana');
  const ben = client([b.url], 'ben');
  const here = ana.join('fold', { history: 0 });
  const away = ben.join('fold', { history: 0 });
  await until('joined', () => here.joined && away.joined);
  const first = (await here.send('hello')).id;
  const second = (await here.send('second')).id;
  await until('ben has both', () => away.lastId === second);
  // Ben's connection drops, and stays away while things change.
  ben.close();
  await here.edit(first, 'hello, fixed');
  await here.react(first, '👍');
  await here.react(second, '🎉');
  await here.unreact(second, '🎉');
  await here.delete(second);
  const late = client([a.url], 'ben');
  late.rooms.set('fold', away);
  away.chat = late;
  away.rejoin();
  await until('ben caught up', () => away.lastId === here.lastId);
  const server = (await history(a.addr, 'fold')).filter((m) => m.type === 'message');
  const strip = (m) => ({ id: m.id, user: m.user, text: m.text, edited: m.edited, deleted: m.deleted || undefined, reactions: Object.keys(m.reactions || {}).length ? m.reactions : undefined });
  for (const messages of [here.list(), away.list()]) {
    assert.deepEqual(messages.map(strip), server.map(strip));
  }
  ana.close();
  late.close();
});
