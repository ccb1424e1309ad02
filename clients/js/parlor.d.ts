// Types of parlor.js, the client library for parlor chat servers.

export class ParlorError extends Error {
  /** The server's error code: bad_request, not_found, forbidden, rate_limited, unavailable, … */
  code: string;
}

export interface Options {
  /** One instance, or several: a reconnect goes to another one of them. */
  url: string | string[];
  /** The name to use on an open server. */
  user?: string;
  /** The token, on a server started with a secret. */
  token?: string;
  /** Where there is no global WebSocket (Node before 22: run with --experimental-websocket, or pass one). */
  WebSocket?: typeof WebSocket;
}

/** A message as reads show it: with its edits, deletes and reactions applied. */
export interface Message {
  type: 'message';
  room: string;
  id: number;
  user: string;
  text: string;
  ts: number;
  /** When it was last edited. */
  edited?: number;
  deleted?: boolean;
  /** For each reaction, the users who reacted, sorted. */
  reactions: Record<string, string[]>;
}

/** A stored event as it was delivered. */
export type Event =
  | Message
  | { type: 'edit'; room: string; id: number; target: number; user: string; text: string; ts: number }
  | { type: 'delete'; room: string; id: number; target: number; user: string; ts: number }
  | { type: 'reaction'; room: string; id: number; target: number; user: string; emoji: string; on: boolean; ts: number };

export interface Ack {
  type: 'ack';
  ref: string;
  room: string;
  /** The stored event's id; null for a reaction that changed nothing. */
  id: number | null;
}

/** A send on its way: pending, or failed (then `retry` or `discard` it). */
export interface Pending {
  ref: string;
  text: string;
  ts: number;
  state: 'pending' | 'failed';
  error?: ParlorError;
}

export interface Events {
  status: { status: 'connecting' | 'connected' | 'offline' };
  welcome: { user: string; instance: string };
  joined: { room: Room; epoch: string; head: number; read: number };
  replayed: { room: Room; count: number; truncated: boolean };
  truncated: { room: Room };
  /** The room's history began again under a new epoch; `old` is what was held. */
  reset: { room: Room; epoch: string; old: Map<number, Message> };
  message: { room: Room; event: Message; message: Message };
  edit: { room: Room; event: Event; message: Message | null };
  delete: { room: Room; event: Event; message: Message | null };
  reaction: { room: Room; event: Event; message: Message | null };
  /** Any stored event, after it was applied. */
  change: { room: Room; event: Event; message: Message | null };
  history: { room: Room; messages: Message[]; more: boolean };
  pending: { room: Room; pending: Pending[] };
  read: { room: Room; user: string; id: number };
  typing: { room: Room; user: string };
  presence: { room: Room; users: string[] };
  member: { room: Room; user: string; event: 'join' | 'leave' };
  error: ParlorError;
}

export class Parlor extends EventTarget {
  constructor(options: Options);
  /** Whoever the server says this connection is, once welcomed. */
  user: string;
  /** The instance this connection is on, once welcomed. */
  instance: string | null;
  status: 'connecting' | 'connected' | 'offline';
  rooms: Map<string, Room>;
  /** Calls `handler` on every event of `type`; returns a function that stops it. */
  on<K extends keyof Events>(type: K, handler: (detail: Events[K]) => void): () => void;
  /** Joins a room, with the newest `history` messages (default 50), or returns it joined already. */
  join(name: string, options?: { history?: number }): Room;
  /** Reconnects now instead of waiting out the backoff. */
  retryNow(): void;
  /** Closes the connection for good. */
  close(): void;
}

export class Room {
  readonly name: string;
  /** The room's epoch: its ids mean something only within it. */
  epoch: string | null;
  /** The last id seen; a rejoin asks for what came after it. */
  lastId: number;
  /** The room's last id when joined, and as events arrive. */
  head: number;
  /** This user's read marker. */
  read: number;
  /** Others' read markers, as they are told. */
  markers: Map<string, number>;
  /** Messages by id, folded. */
  messages: Map<number, Message>;
  /** Users present, as last told. */
  present: Set<string>;
  /** Sends not acked yet, oldest first. */
  pending: Pending[];
  /** Whether the join's replay is done and live events flow. */
  joined: boolean;
  /** Messages held, oldest first. */
  list(): Message[];
  /** Whether older messages may be in history. */
  hasOlder(): boolean;
  /** Loads up to `limit` older messages; resolves with them. */
  older(limit?: number): Promise<Message[]>;
  /** Each resolves with the ack once stored; offline, waits for the connection. Stored once. */
  send(text: string): Promise<Ack>;
  edit(id: number, text: string): Promise<Ack>;
  delete(id: number): Promise<Ack>;
  react(id: number, emoji: string): Promise<Ack>;
  unreact(id: number, emoji: string): Promise<Ack>;
  /** Sends a failed send again, with its ref. */
  retry(pending: Pending): Promise<Ack>;
  /** Gives up a failed send. */
  discard(pending: Pending): void;
  /** Marks the room read up to `id` (the last id seen by default). */
  markRead(id?: number): void;
  /** Tells the others that this user is typing. */
  typing(): void;
  leave(): void;
}
