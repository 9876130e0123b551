// The browser client's timers on a fake clock, over a fake WebSocket: the client carries out
// its policy's deadlines (watchdog, refresh) without the service and without waiting.
import assert from "node:assert/strict";
import { afterEach, beforeEach, mock, test } from "node:test";

import { RealtimeSyncClient } from "../realtime-sync.js";

const MAX_TIMER_MS = 2 ** 31 - 1;
const DAY_MS = 24 * 3600 * 1000;

/** A WebSocket stand-in the test opens, feeds and inspects. */
class FakeSocket {
  static opened = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.opened.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
  }
  open() {
    this.onopen();
  }
  receive(frame) {
    this.onmessage({ data: JSON.stringify(frame) });
  }
  last(type) {
    return this.sent.filter((f) => f.type === type).at(-1);
  }
}

/** Let the client's promise continuations (the token function is awaited) run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** A started client whose first connection is open and accepted (`connected`, subscribed). */
async function connectedClient(options, connected = {}) {
  FakeSocket.opened = [];
  const client = new RealtimeSyncClient({ url: "ws://service/ws", WebSocket: FakeSocket, ...options });
  const seen = { reconnects: [] };
  client.addEventListener("reconnect", (e) => seen.reconnects.push(e.detail));
  client.start();
  await settle();
  const ws = FakeSocket.opened.at(-1);
  ws.open();
  ws.receive({ type: "connected", connection_id: "c1", user_id: "u", ...connected });
  ws.receive({ type: "subscribed", all: true, id: ws.last("subscribe").id });
  assert.equal(client.state, "connected");
  return { client, ws, seen };
}

beforeEach(() => mock.timers.enable({ apis: ["setTimeout", "Date"], now: 1_700_000_000_000 }));
afterEach(() => mock.timers.reset());

test("the watchdog pings after the interval and replaces a connection whose ping goes unanswered", async () => {
  const { client, ws, seen } = await connectedClient({
    token: "t", pingIntervalMs: 20000, pingTimeoutMs: 10000, backoffBaseMs: 500, random: () => 0.5,
  });
  try {
    mock.timers.tick(19999);
    assert.equal(ws.last("ping"), undefined);
    mock.timers.tick(1);
    assert.ok(ws.last("ping"), "a ping after 20 s without a frame");
    mock.timers.tick(5000);
    ws.receive({ type: "pong", id: ws.last("ping").id });
    mock.timers.tick(10000);
    assert.equal(ws.closedWith, null, "the answered ping keeps the connection");
    assert.equal(ws.sent.filter((f) => f.type === "ping").length, 1);
    mock.timers.tick(10000); // 20 s after the pong: the second ping
    assert.equal(ws.sent.filter((f) => f.type === "ping").length, 2);
    mock.timers.tick(9999);
    assert.equal(ws.closedWith, null);
    mock.timers.tick(1);
    assert.deepEqual(ws.closedWith, { code: 4000, reason: "ping unanswered" });
    assert.deepEqual(seen.reconnects, [{ attempt: 1, delayMs: 250, code: 1006, reason: "ping unanswered" }]);
    mock.timers.tick(249);
    await settle();
    assert.equal(FakeSocket.opened.length, 1);
    mock.timers.tick(1);
    await settle();
    assert.equal(FakeSocket.opened.length, 2, "a new connection after the announced delay");
  } finally {
    client.close();
  }
});

test("a token that lives longer than setTimeout can wait is refreshed when due, not at once", async () => {
  let calls = 0;
  const token = () => `token-${(calls += 1)}`;
  const lifeMs = 60 * DAY_MS;
  const { client, ws, seen } = await connectedClient(
    { token, pingIntervalMs: 200 * DAY_MS, pingTimeoutMs: DAY_MS },
    { exp: (Date.now() + lifeMs) / 1000 },
  );
  try {
    const dueMs = lifeMs - 60000; // a minute early
    // One setTimeout's range at a time: the mock clock runs a timer set during a tick at
    // the tick's end.
    for (let step = 0; step < 2; step++) {
      mock.timers.tick(MAX_TIMER_MS);
      await settle();
      assert.equal(calls, 1, "not asked when setTimeout's range runs out");
    }
    mock.timers.tick(dueMs - 2 * MAX_TIMER_MS - 1);
    await settle();
    assert.equal(calls, 1);
    assert.equal(ws.last("refresh"), undefined);
    mock.timers.tick(1);
    await settle();
    assert.equal(calls, 2);
    assert.equal(ws.last("refresh").token, "token-2");
    assert.deepEqual(seen.reconnects, []);
  } finally {
    client.close();
  }
});
