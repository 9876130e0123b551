// ClientPolicy against the vectors the Python client runs too (tests/unit/test_client_policy.py).
// clients/vectors/policy.json's header describes the steps. The clock is each step's `t`: no
// test here waits, and none needs the service.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { ClientPolicy, CloseCode, RecentIds, backoffDelay, refreshDelayMs } from "../realtime-sync.js";

const VECTORS = JSON.parse(readFileSync(new URL("../../vectors/policy.json", import.meta.url), "utf8"));

/** A decision in the vectors' words (snake_case keys, milliseconds). */
function asVector(decision) {
  if (decision === null || decision === undefined) return null;
  const { action } = decision;
  switch (action) {
    case "reconnect":
      return { action, attempt: decision.attempt, delay_ms: decision.delayMs, code: decision.code, reason: decision.reason };
    case "give_up":
      return { action, code: decision.code, reason: decision.reason };
    case "refresh_in":
      return { action, delay_ms: decision.delayMs };
    case "send_refresh":
      return { action, token: decision.token };
    case "lapse":
      return { action, reason: decision.reason };
    case "ping":
    case "wait":
      return { action, check_at_ms: decision.checkAt };
    case "drop":
      return { action };
    default:
      throw new Error(`unknown decision ${JSON.stringify(decision)}`);
  }
}

function newPolicy(token, random) {
  const c = VECTORS.config;
  return new ClientPolicy({
    backoffBaseMs: c.backoff_base_ms,
    backoffCapMs: c.backoff_cap_ms,
    pingIntervalMs: c.ping_interval_ms,
    pingTimeoutMs: c.ping_timeout_ms,
    renewableToken: token === "provider",
    random,
  });
}

function step(policy, s) {
  const t = s.t ?? 0;
  switch (s.do) {
    case "open":
      return policy.opening(s.token, t);
    case "token_failed":
      return policy.tokenFailed(s.error);
    case "connected":
      return policy.connected(s.exp, t);
    case "subscribed":
      return policy.subscribed();
    case "closed":
      return policy.closed(s.code, s.reason);
    case "frame":
      return policy.frameReceived(t);
    case "delivery_started":
      return policy.deliveryStarted();
    case "delivery_done":
      return policy.deliveryDone(t);
    case "watchdog":
      return policy.watchdog(t);
    case "refreshed":
      return policy.refreshed(s.exp, t);
    case "refresh_token":
      return policy.refreshToken(s.token, t);
    default:
      throw new Error(`unknown step ${s.do}`);
  }
}

/** Every step's decision; a reconnect's `delay_ms` is [delay at jitter 0, at jitter 1]. */
function run(token, steps) {
  const low = newPolicy(token, () => 0);
  const high = newPolicy(token, () => 1);
  return steps.map((s) => {
    const atLow = asVector(step(low, s));
    const atHigh = asVector(step(high, s));
    if (atLow !== null && atHigh !== null && atLow.action === "reconnect") {
      atLow.delay_ms = atHigh.delay_ms = [atLow.delay_ms, atHigh.delay_ms];
    }
    assert.deepEqual(atLow, atHigh, "only the delay depends on the jitter");
    return atLow;
  });
}

function close(a, b) {
  return Array.isArray(b) ? b.every((x, i) => close(a[i], x)) : Math.abs(a - b) <= 1e-6;
}

function assertDecides(decided, expect, where) {
  if (expect === undefined) {
    assert.equal(decided, null, `${where}: decided ${JSON.stringify(decided)}, expected nothing`);
    return;
  }
  assert.notEqual(decided, null, `${where}: decided nothing, expected ${JSON.stringify(expect)}`);
  for (const [key, wanted] of Object.entries(expect)) {
    const got = decided[key];
    const message = `${where}: ${key} of ${JSON.stringify(decided)}`;
    if (key.endsWith("_ms")) assert.ok(close(got, wanted), message);
    else assert.deepEqual(got, wanted, message);
  }
}

test("the vectors' close codes are the server's, and the client's table is the same", () => {
  assert.deepEqual({ ...CloseCode }, VECTORS.close_codes);
  assert.ok(Object.isFrozen(CloseCode));
});

test("close code and session state decide the reconnect", () => {
  for (const row of VECTORS.close_table) {
    const steps = [];
    for (let n = 0; n < row.failures_before; n++) {
      steps.push({ do: "open", token: `t${n}` }, { do: "closed", code: 1006, reason: "" });
    }
    steps.push({ do: "open", token: "t" });
    if (row.subscribed) steps.push({ do: "connected", exp: null }, { do: "subscribed" });
    steps.push({ do: "closed", code: row.code, reason: "bye" });
    assertDecides(run(row.token, steps).at(-1), row.expect, JSON.stringify(row));
  }
});

for (const scenario of VECTORS.scenarios) {
  test(`scenario: ${scenario.name}`, () => {
    const decided = run(scenario.token, scenario.steps);
    scenario.steps.forEach((s, n) => assertDecides(decided[n], s.expect, `step ${n} ${JSON.stringify(s)}`));
  });
}

for (const vector of VECTORS.dedupe) {
  test(`dedupe: ${vector.name}`, () => {
    const ids = new RecentIds(vector.size);
    assert.deepEqual(vector.seen.map(([id]) => [id, ids.seen(id)]), vector.seen);
  });
}

test("refreshDelayMs: a fifth of the lifetime early, at most a minute", () => {
  assert.equal(refreshDelayMs(1010, 1_000_000), 8000);
  assert.equal(refreshDelayMs(1000 + 3600, 1_000_000), 3_540_000);
  assert.equal(refreshDelayMs(995, 1_000_000), 0);
});

test("backoff: full jitter, capped, spread over [0, cap] across 100 clients", () => {
  const baseMs = 500;
  const capMs = 8000;
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
    const delays = Array.from({ length: 100 }, () => backoffDelay(attempt, { baseMs, capMs }));
    assert.ok(delays.every((d) => d >= 0 && d <= ceiling), `attempt ${attempt} within [0, ${ceiling}]`);
    // Spread, not lockstep: every tenth of [0, ceiling] is used, none holds a crowd.
    const bins = new Array(10).fill(0);
    for (const d of delays) bins[Math.min(9, Math.floor((d / ceiling) * 10))] += 1;
    assert.ok(bins.filter((n) => n > 0).length >= 8, `attempt ${attempt}: ${bins}`);
    assert.ok(Math.max(...bins) <= 25, `attempt ${attempt}: ${bins}`);
    assert.equal(new Set(delays).size, 100);
  }
  assert.equal(backoffDelay(30, { baseMs, capMs, random: () => 1 }), capMs, "the cap holds");
  assert.equal(backoffDelay(0, { baseMs, capMs, random: () => 1 }), baseMs);
});
