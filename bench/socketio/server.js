// The Socket.IO 4.8 server that parlor's benchmark (bench/run.py) compares
// parlor with: the same chat shape as parlor's `join` and `send`, two
// instances over one Redis, so that both are measured doing the same work.
//
//   PORT=19100 REDIS_URL=redis://127.0.0.1:6400 ADAPTER=pubsub node server.js
//
// ADAPTER=pubsub is @socket.io/redis-adapter (Redis Pub/Sub, the usual
// choice); ADAPTER=streams is @socket.io/redis-streams-adapter with connection
// state recovery, the closest Socket.IO has to parlor's stored, replayable
// rooms, which the reconnect storm (examples/storm.rs) resumes with: a session
// is kept for maxDisconnectionDuration after a disconnect, far longer than any
// gap in the storm. Clients use the WebSocket transport only, as parlor's do.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 3000);
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const adapterName = process.env.ADAPTER || "pubsub";

async function adapterOptions() {
  const client = createClient({ url: redisUrl });
  client.on("error", (err) => console.error(`redis: ${err.message}`));
  await client.connect();
  if (adapterName === "pubsub") {
    // A subscribed Redis connection can do nothing else, hence a second one.
    const subscriber = client.duplicate();
    subscriber.on("error", (err) => console.error(`redis subscriber: ${err.message}`));
    await subscriber.connect();
    const { createAdapter } = require("@socket.io/redis-adapter");
    return { adapter: createAdapter(client, subscriber) };
  }
  if (adapterName === "streams") {
    const { createAdapter } = require("@socket.io/redis-streams-adapter");
    return {
      adapter: createAdapter(client),
      connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000 },
    };
  }
  throw new Error(`ADAPTER must be pubsub or streams, not ${adapterName}`);
}

async function main() {
  const options = await adapterOptions();
  // Socket.IO answers its own path; everything else reaches this handler,
  // which gives the bench a readiness probe like parlor's.
  const httpServer = http.createServer((req, res) => {
    res.writeHead(req.url === "/healthz" ? 200 : 404).end();
  });
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    ...options,
  });

  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack();
    });
    // The ack says the message was handed to the adapter; parlor's says it
    // was stored. The bench reports both as they are.
    socket.on("send", (message, ack) => {
      io.to(message.room).emit("message", message);
      if (typeof ack === "function") ack();
    });
  });

  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => process.exit(0));
  }
  httpServer.listen(port, () => {
    console.log(`socket.io ${adapterName} adapter listening on port ${port}`);
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
