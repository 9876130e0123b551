// The browser client against the real service (started by tests/integration/test_client_js.py,
// which sets the RS_* variables; without them these tests are skipped, and `node --test test/`
// still runs the policy vectors). Node 20 has no global WebSocket: the `ws` package is injected
// through the `WebSocket` option.
import assert from "node:assert/strict";
import { createHmac, randomUUID } from "node:crypto";
import net from "node:net";
import { test as nodeTest } from "node:test";
import WebSocket from "ws";

import { RealtimeSyncClient, TokenRefusedError } from "../realtime-sync.js";

const WS_URL = process.env.RS_WS_URL;
const PUBLISH_URL = process.env.RS_PUBLISH_URL;
const SECRET = process.env.RS_JWT_SECRET;
const CONTROL_URL = process.env.RS_CONTROL_URL;
const SKIP = !WS_URL || !PUBLISH_URL || !SECRET || !CONTROL_URL
  ? "needs the service: run through tests/integration/test_client_js.py (it starts it)"
  : false;
const test = (name, fn) => nodeTest(name, { skip: SKIP }, fn);

function mintToken(user, ttlS = 3600) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const signed = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ userId: user, sub: user, iat: now, exp: now + ttlS })}`;
  return `${signed}.${createHmac("sha256", SECRET).update(signed).digest("base64url")}`;
}

async function publish(user, taskId, extra = {}) {
  const id = randomUUID();
  const event = { id, type: "TASK_CHANGED", user_id: user, task_id: taskId, data: { title: `t${taskId}` }, ...extra };
  const reply = await fetch(PUBLISH_URL, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(event) });
  assert.equal(reply.status, 204, await reply.text());
  return id;
}

async function waitFor(predicate, timeoutMs = 8000, what = "condition") {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what} not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The `exp` claim of a token this test minted. */
function expiry(token) {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString()).exp;
}

/** Publish a last event and wait for it: the updates before it (any duplicate of an earlier
 * event included) are then all there are. */
async function settled(user, seen) {
  const marker = await publish(user, 999999);
  await waitFor(() => seen.updates.some((u) => u.event_id === marker), 8000, "the marker event");
  return seen.updates.map((u) => u.event_id).filter((id) => id !== marker);
}

/** A WebSocket class that records the URLs it was asked to open. */
function recordingWebSocket(urls) {
  return class extends WebSocket {
    constructor(url, ...rest) {
      urls.push(url);
      super(url, ...rest);
    }
  };
}

function watch(client) {
  const seen = { updates: [], states: [], reconnects: [], resyncs: 0, errors: [] };
  client.addEventListener("update", (e) => seen.updates.push(e.detail));
  client.addEventListener("state", (e) => seen.states.push(e.detail));
  client.addEventListener("reconnect", (e) => seen.reconnects.push(e.detail));
  client.addEventListener("resync", () => (seen.resyncs += 1));
  client.addEventListener("error", (e) => seen.errors.push(e.detail));
  return seen;
}

/** A TCP proxy in front of the service that can cut, refuse or freeze connections. */
async function startProxy() {
  const target = new URL(WS_URL);
  const pairs = new Set();
  const proxy = { mode: "open", connections: 0 };
  const server = net.createServer((inbound) => {
    if (proxy.mode === "refuse") return inbound.destroy();
    proxy.connections += 1;
    const outbound = net.connect(Number(target.port), target.hostname);
    const pair = { inbound, outbound, frozen: false };
    pairs.add(pair);
    const forward = (from, to) =>
      from.on("data", (chunk) => {
        if (!pair.frozen) to.write(chunk);
      });
    forward(inbound, outbound);
    forward(outbound, inbound);
    const end = () => {
      pairs.delete(pair);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on("close", end).on("error", end);
    outbound.on("close", end).on("error", end);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  proxy.url = `ws://127.0.0.1:${server.address().port}/ws`;
  proxy.cut = () => {
    for (const { inbound, outbound } of pairs) {
      inbound.destroy();
      outbound.destroy();
    }
  };
  proxy.freeze = () => {
    for (const pair of pairs) pair.frozen = true;
  };
  proxy.close = () => {
    proxy.cut();
    server.close();
  };
  return proxy;
}

const fast = { backoffBaseMs: 50, backoffCapMs: 400, WebSocket };

test("authenticates with the first frame (token never in the URL) and delivers updates", async () => {
  const urls = [];
  const token = mintToken("js-frame");
  const client = new RealtimeSyncClient({ url: WS_URL, token, ...fast, WebSocket: recordingWebSocket(urls) });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    assert.equal(client.userId, "js-frame");
    const id = await publish("js-frame", 7, { type: "TASK_ADDED", data: { title: "Hello", status: "todo" } });
    await waitFor(() => seen.updates.length === 1, 8000, "the update");
    const [update] = seen.updates;
    assert.equal(update.event_id, id);
    assert.equal(update.action, "task_created");
    assert.equal(update.task_id, 7);
    assert.deepEqual(update.data, { title: "Hello", status: "todo" });
    assert.ok(urls.every((u) => !u.includes(token) && !u.includes("token=")), urls.join());
    assert.deepEqual(seen.states.slice(0, 2), ["connecting", "connected"]);
  } finally {
    client.close();
  }
});

test("losing access to a task is an accessRevoked event, never an update", async () => {
  const client = new RealtimeSyncClient({ url: WS_URL, token: mintToken("js-guest"), ...fast });
  const seen = watch(client);
  const revoked = [];
  client.addEventListener("accessRevoked", (e) => revoked.push(e.detail));
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    const shared = await publish("js-host", 5, { timestamp: "2026-12-01T10:00:00Z", metadata: { shared_with: ["js-guest"] } });
    await waitFor(() => seen.updates.length === 1, 8000, "the shared update");
    const unshared = await publish("js-host", 5, { timestamp: "2026-12-01T10:00:01Z", metadata: { shared_with: [] } });
    await waitFor(() => revoked.length === 1, 8000, "the revocation");
    assert.deepEqual(revoked[0], { type: "task_update", action: "task_access_revoked", task_id: 5, event_id: unshared });
    assert.deepEqual(seen.updates.map((u) => u.event_id), [shared]);
    assert.equal(client.lastEventId, unshared);
  } finally {
    client.close();
  }
});

test("query mode sends the token in the URL and works", async () => {
  const urls = [];
  const client = new RealtimeSyncClient({ url: WS_URL, token: mintToken("js-query"), authMode: "query", ...fast, WebSocket: recordingWebSocket(urls) });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    await publish("js-query", 1);
    await waitFor(() => seen.updates.length === 1, 8000, "the update");
    assert.match(urls[0], /\?token=/);
  } finally {
    client.close();
  }
});

test("updates() is an async iterator that ends when the client closes", async () => {
  const client = new RealtimeSyncClient({ url: WS_URL, token: mintToken("js-iter"), ...fast });
  const iterator = client.updates();
  client.start();
  await waitFor(() => client.state === "connected", 8000, "connected");
  const ids = [await publish("js-iter", 1), await publish("js-iter", 2)];
  const got = [];
  for await (const item of iterator) {
    got.push(item.event_id);
    if (got.length === 2) client.close();
  }
  assert.deepEqual(got.sort(), ids.sort());
});

test("after a dropped connection it resumes with since: no gap, no duplicate", async () => {
  const proxy = await startProxy();
  const client = new RealtimeSyncClient({ url: proxy.url, token: mintToken("js-resume"), ...fast });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    const before = [await publish("js-resume", 1), await publish("js-resume", 2)];
    await waitFor(() => seen.updates.length === 2, 8000, "first updates");
    proxy.mode = "refuse";
    proxy.cut();
    await waitFor(() => client.state === "reconnecting", 8000, "reconnecting");
    const missed = [];
    for (let i = 0; i < 5; i++) missed.push(await publish("js-resume", 10 + i));
    proxy.mode = "open";
    await waitFor(() => client.connections === 2 && client.state === "connected", 8000, "reconnected");
    const after = await publish("js-resume", 99);
    await waitFor(() => seen.updates.length >= 8, 8000, "all updates");
    const ids = await settled("js-resume", seen);
    assert.deepEqual(new Set(ids), new Set([...before, ...missed, after]));
    assert.equal(ids.length, 8, "no duplicate");
    assert.deepEqual(ids.slice(0, 2).sort(), before.sort());
    assert.equal(seen.resyncs, 0);
  } finally {
    client.close();
    proxy.close();
  }
});

test("a replay overlapping what was delivered is not delivered twice", async () => {
  const proxy = await startProxy();
  const client = new RealtimeSyncClient({ url: proxy.url, token: mintToken("js-dedupe"), ...fast });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    const first = await publish("js-dedupe", 1);
    const rest = [await publish("js-dedupe", 2), await publish("js-dedupe", 3)];
    await waitFor(() => seen.updates.length === 3, 8000, "updates");
    client.lastEventId = first; // e.g. a stale checkpoint: the server replays 2 and 3 again
    proxy.cut();
    await waitFor(() => client.connections === 2 && client.state === "connected", 8000, "reconnected");
    const live = await publish("js-dedupe", 4);
    await waitFor(() => seen.updates.length >= 4, 8000, "the live update");
    assert.deepEqual((await settled("js-dedupe", seen)).sort(), [first, ...rest, live].sort());
  } finally {
    client.close();
    proxy.close();
  }
});

test("reconnects after the service restarts and catches up", async () => {
  const client = new RealtimeSyncClient({ url: WS_URL, token: mintToken("js-restart"), backoffBaseMs: 100, backoffCapMs: 1000, WebSocket });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    const before = await publish("js-restart", 1);
    await waitFor(() => seen.updates.length === 1, 8000, "first update");
    const restart = fetch(`${CONTROL_URL}/restart`, { method: "POST" }); // SIGTERM, then start again
    await waitFor(() => client.state === "reconnecting", 15000, "reconnecting");
    const missed = [await publish("js-restart", 2), await publish("js-restart", 3)];
    assert.equal((await restart).status, 200);
    await waitFor(() => client.connections >= 2 && client.state === "connected", 15000, "reconnected");
    const after = await publish("js-restart", 4);
    await waitFor(() => seen.updates.length >= 4, 15000, "caught up");
    const ids = await settled("js-restart", seen);
    assert.equal(ids[0], before);
    assert.deepEqual(new Set(ids), new Set([before, ...missed, after]));
    assert.equal(ids.length, 4, "no duplicate");
    assert.ok(seen.reconnects.some((r) => r.code === 1001 || r.code === 1006), JSON.stringify(seen.reconnects));
  } finally {
    client.close();
  }
});

test("a provider's token is refreshed on the live connection: no reconnect, no 4002", async () => {
  const tokens = [];
  const provider = () => {
    tokens.push(mintToken("js-refresh", 2)); // every token lives 2 s; the server has no leeway
    return tokens.at(-1);
  };
  const client = new RealtimeSyncClient({ url: WS_URL, token: provider, ...fast });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    const firstConnection = client.connectionId;
    await waitFor(() => tokens.length >= 3, 10000, "two refreshes");
    await waitFor(() => Date.now() / 1000 > expiry(tokens[0]), 5000, "the first token's expiry");
    const id = await publish("js-refresh", 1);
    await waitFor(() => seen.updates.some((u) => u.event_id === id), 8000, "the update");
    assert.equal(client.connectionId, firstConnection);
    assert.equal(client.connections, 1);
    assert.deepEqual(seen.reconnects, []);
    assert.ok(tokens.length >= 3, `asked ${tokens.length} times`);
  } finally {
    client.close();
  }
});

test("a token function that still returns its cached token is asked again before expiry", async () => {
  const tokens = [];
  let asked = 0;
  const provider = () => {
    asked += 1;
    if (asked !== 2) tokens.push(mintToken("js-cached", 7)); // the 2nd call returns the cached one
    return tokens.at(-1);
  };
  const client = new RealtimeSyncClient({ url: WS_URL, token: provider, ...fast });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    await waitFor(() => asked >= 3, 10000, "the token function asked again");
    await waitFor(() => Date.now() / 1000 > expiry(tokens[0]), 5000, "the first token's expiry");
    const id = await publish("js-cached", 1);
    await waitFor(() => seen.updates.some((u) => u.event_id === id), 8000, "the update");
    assert.equal(client.connections, 1);
    assert.deepEqual(seen.reconnects, []);
    assert.ok(asked >= 3, `asked ${asked} times`);
  } finally {
    client.close();
  }
});

test("a close for sending too much right after connecting still backs off", async () => {
  // 45 subscriptions at once overrun the server's burst of 40: 4029 after `connected`.
  let seed = 7;
  const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  const taskIds = Array.from({ length: 45 }, (_, i) => i);
  const client = new RealtimeSyncClient({
    url: WS_URL, token: mintToken("js-burst"), taskIds, WebSocket, backoffBaseMs: 20, backoffCapMs: 500, random,
  });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => seen.reconnects.length >= 4, 10000, "four reconnects");
    const first = seen.reconnects.slice(0, 4);
    assert.ok(first.every((r) => r.code === 4029), JSON.stringify(seen.reconnects));
    // The backoff grows twice as fast (4029), never restarting at 1.
    assert.deepEqual(first.map((r) => r.attempt), [1, 3, 5, 7]);
    assert.ok(client.connections >= 4, `connections: ${client.connections}`);
    assert.ok(!seen.states.includes("connected"));
  } finally {
    client.close();
  }
});

test("a token function that throws is retried with backoff, not given up", async () => {
  let calls = 0;
  const token = () => {
    calls += 1;
    if (calls === 2 || calls === 3) throw new Error("auth service unavailable");
    return mintToken("js-flaky-auth");
  };
  const proxy = await startProxy();
  const client = new RealtimeSyncClient({ url: proxy.url, token, ...fast });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    proxy.cut();
    await waitFor(() => client.connections === 2 && client.state === "connected", 8000, "reconnected");
    const id = await publish("js-flaky-auth", 1);
    await waitFor(() => seen.updates.some((u) => u.event_id === id), 8000, "the update");
    const failed = seen.reconnects.filter((r) => String(r.reason).startsWith("token provider failed"));
    assert.equal(failed.length, 2, JSON.stringify(seen.reconnects));
    assert.equal(seen.errors.length, 0);
  } finally {
    client.close();
    await proxy.close();
  }
});

test("a connection that never opens is given up after openTimeoutMs and retried", async () => {
  const accepted = [];
  const silent = net.createServer((socket) => accepted.push(socket)); // accepts, never answers
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  const url = `ws://127.0.0.1:${silent.address().port}/ws`;
  const client = new RealtimeSyncClient({ url, token: mintToken("js-hang"), ...fast, openTimeoutMs: 300 });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => seen.reconnects.length >= 2, 3000, "two retries");
    assert.ok(seen.reconnects.every((r) => r.reason === "open timeout"), JSON.stringify(seen.reconnects));
  } finally {
    client.close();
    for (const socket of accepted) socket.destroy();
    silent.close();
  }
});

/** A WebSocket class that records the frames the client sent. */
function sendRecordingWebSocket(sent) {
  return class extends WebSocket {
    send(data, ...rest) {
      sent.push(JSON.parse(String(data)));
      return super.send(data, ...rest);
    }
  };
}

test("it resumes with since_time = the last event's published_at", async () => {
  const proxy = await startProxy();
  const sent = [];
  const client = new RealtimeSyncClient({
    ...fast, url: proxy.url, token: mintToken("js-since-time"), WebSocket: sendRecordingWebSocket(sent),
  });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    const last = await publish("js-since-time", 1);
    await waitFor(() => seen.updates.length === 1, 8000, "the update");
    const published = seen.updates[0].published_at;
    assert.equal(typeof published, "number", "the frame carries published_at");
    assert.equal(client.lastEventTime, published);
    proxy.cut();
    await waitFor(() => client.connections === 2 && client.state === "connected", 8000, "reconnected");
    const resumed = sent.filter((f) => f.type === "subscribe").at(-1);
    assert.equal(resumed.since, last);
    assert.equal(resumed.since_time, published);
  } finally {
    client.close();
    proxy.close();
  }
});

test("a resync says why: an unknown since without since_time is unknown_position", async () => {
  const client = new RealtimeSyncClient({
    url: WS_URL, token: mintToken("js-resync-reason"), since: "never-seen", ...fast,
  });
  const resyncs = [];
  client.addEventListener("resync", (event) => resyncs.push(event.detail));
  client.start();
  try {
    await waitFor(() => resyncs.length === 1, 8000, "the resync");
    assert.equal(resyncs[0].reason, "unknown_position");
    assert.equal(resyncs[0].since, "never-seen");
  } finally {
    client.close();
  }
});

test("updates() keeps at most maxPending items; past it, one resync_required", async () => {
  const client = new RealtimeSyncClient({ url: WS_URL, token: mintToken("js-backlog"), ...fast, maxPending: 3 });
  const seen = watch(client);
  const updates = client.updates();
  client.start();
  try {
    const first = updates.next(); // the iterator is live from here
    await waitFor(() => client.state === "connected", 8000, "connected");
    await publish("js-backlog", 0);
    assert.equal((await first).value.type, "task_update");
    for (let i = 1; i <= 5; i++) await publish("js-backlog", i); // nobody reads meanwhile
    await waitFor(() => seen.updates.length === 6, 8000, "six updates received");
    assert.equal((await updates.next()).value.type, "resync_required"); // 1..5 did not fit
    const later = await publish("js-backlog", 6);
    const after = [];
    for (;;) {
      const item = (await updates.next()).value;
      after.push(item.event_id);
      if (item.event_id === later) break;
    }
    assert.ok(after.length <= 3, `kept ${after.length - 1} of the overflowed updates`);
  } finally {
    client.close();
  }
});

test("after 4002 it asks the provider for a fresh token and resumes", async () => {
  // The refresh is refused (another user's token), so the first token lapses: 4002.
  const tokens = [];
  const plan = [["js-expiry", 2], ["someone-else", 3600], ["js-expiry", 3600]];
  const provider = async () => {
    const [user, ttl] = plan[Math.min(tokens.length, 2)];
    const token = mintToken(user, ttl);
    tokens.push(token);
    return token;
  };
  const client = new RealtimeSyncClient({ url: WS_URL, token: provider, ...fast });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    const first = await publish("js-expiry", 1);
    await waitFor(() => seen.reconnects.some((r) => r.code === 4002), 8000, "a 4002 close");
    const second = await publish("js-expiry", 2);
    await waitFor(() => seen.updates.length === 2, 8000, "updates after the fresh token");
    assert.deepEqual(seen.updates.map((u) => u.event_id), [first, second]);
    assert.equal(tokens.length, 3, "asked for the refresh, then once more after the 4002");
    assert.equal(client.connections, 2);
    assert.equal(seen.errors.length, 0);
  } finally {
    client.close();
  }
});

test("a refused static token stops the client instead of being retried", async () => {
  const urls = [];
  const client = new RealtimeSyncClient({ url: WS_URL, token: mintToken("js-expired", -60), ...fast, WebSocket: recordingWebSocket(urls) });
  const seen = watch(client);
  const iteration = (async () => {
    for await (const _ of client.updates()) {
      /* nothing arrives */
    }
  })();
  client.start();
  await assert.rejects(iteration, TokenRefusedError);
  // The client has stopped (no timer reconnects a stopped client): the count is final.
  assert.equal(urls.length, 1, "one attempt only");
  assert.equal(client.state, "closed");
  assert.equal(seen.errors[0].code, 4001);
});

test("the watchdog replaces a silent connection", async () => {
  const proxy = await startProxy();
  const client = new RealtimeSyncClient({ url: proxy.url, token: mintToken("js-silent"), ...fast, pingIntervalMs: 300, pingTimeoutMs: 300 });
  const seen = watch(client);
  client.start();
  try {
    await waitFor(() => client.state === "connected", 8000, "connected");
    const firstConnection = client.connectionId;
    proxy.freeze(); // the TCP connection stays open, nothing gets through
    await waitFor(() => seen.reconnects.some((r) => r.reason === "ping unanswered"), 5000, "the watchdog");
    assert.equal(seen.reconnects[0].code, 1006, "no close frame: the socket was given up");
    await waitFor(() => client.connections === 2 && client.state === "connected", 8000, "reconnected");
    assert.notEqual(client.connectionId, firstConnection);
    const id = await publish("js-silent", 5);
    await waitFor(() => seen.updates.some((u) => u.event_id === id), 8000, "an update on the new connection");
  } finally {
    client.close();
    proxy.close();
  }
});
