// realtime-sync browser client: one dependency-free ES module.
//
//   import { RealtimeSyncClient } from "/client/realtime-sync.js";
//   const client = new RealtimeSyncClient({ url: "wss://example.com/ws", token: () => getJwt() });
//   client.addEventListener("update", (e) => render(e.detail));      // a task_update frame
//   client.addEventListener("resync", () => refetchFromTaskApi());   // missed updates are gone
//   client.addEventListener("accessRevoked", (e) => forget(e.detail.task_id)); // no longer shared
//   client.addEventListener("state", (e) => showStatus(e.detail));   // connecting|connected|reconnecting|resyncing|closed
//   client.start();
//   // or: for await (const item of client.updates()) { ... }
//
// Behaviour (the same as the Python client, realtime_sync/client.py):
// - the token is a string or a (possibly async) function, asked again before every connection
//   attempt; by default it travels in the first frame ({"type":"auth"}), never in the URL;
//   `authMode: "query"` puts it in `?token=` instead;
// - 4001/4002/4003 closes mean "get a fresh token": a refused token is never sent again;
// - reconnects use exponential backoff with full jitter: uniform(0, min(cap, base * 2^attempt)),
//   started over only after a session whose subscriptions were all confirmed (not closed
//   4029);
//   a token function that throws is retried with the same backoff; a connection that does not
//   open within openTimeoutMs is given up and retried;
// - after a reconnect it subscribes again with `since` = the last event id seen, so the server
//   replays what was missed; duplicate event ids are dropped (the last dedupeSize ids seen);
// - a watchdog pings a silent connection and replaces it when the ping goes unanswered;
// - with a token function, a live connection outlives its token: before the expiry the server
//   announced (`exp` in `connected` / `refreshed`), the function is asked for a new token, sent
//   in a {"type":"refresh"} frame; if that fails the server closes with 4002 (see above).
// Every such decision is taken by ClientPolicy below (no timer, no socket: the same machine as
// realtime_sync/core/client_policy.py, both tested against clients/vectors/policy.json);
// RealtimeSyncClient only carries them out.

/** The close codes the server sends, by name: the same table as the server's CloseCode
 * (realtime_sync/core/outcomes.py); clients/vectors/policy.json checks that both agree. */
export const CloseCode = Object.freeze({
  GOING_AWAY: 1001,
  MESSAGE_TOO_BIG: 1009,
  UNAUTHORIZED: 4001,
  TOKEN_EXPIRED: 4002,
  ACCESS_REVOKED: 4003,
  SLOW_CONSUMER: 4008,
  EVENTS_LOST: 4010,
  TOO_MANY: 4029,
});
/** Close codes after which the same token must not be sent again. */
export const AUTH_CLOSE_CODES = new Set([
  CloseCode.UNAUTHORIZED,
  CloseCode.TOKEN_EXPIRED,
  CloseCode.ACCESS_REVOKED,
]);
/** Close codes that mean "slow down": the backoff keeps growing instead of restarting. */
export const THROTTLE_CLOSE_CODES = new Set([CloseCode.TOO_MANY]);
const NORMAL_CLOSURE = 1000; // RFC 6455: the client closes for good
const ABNORMAL_CLOSURE = 1006; // RFC 6455: the connection ended without a close frame
const GIVEN_UP = 4000; // private use: the client gives a connection up (open timeout, silence)
const SILENT_REASON = "ping unanswered";
const REFRESH_RETRY_MIN_MS = 1000;
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Milliseconds from `nowMs` until a token expiring at `expSeconds` (Unix time) should be
 * refreshed: a fifth of its remaining life early, at most a minute early. */
export function refreshDelayMs(expSeconds, nowMs) {
  const remaining = expSeconds * 1000 - nowMs;
  return Math.max(0, remaining - Math.min(60000, 0.2 * remaining));
}

/** Full-jitter exponential backoff: a uniform delay in [0, min(cap, base * 2^attempt)] ms. */
export function backoffDelay(attempt, { baseMs, capMs, random = Math.random }) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 52));
  return random() * ceiling;
}

/**
 * The client's reconnect, backoff, refresh and watchdog decisions, with no timer or socket
 * (the same machine as realtime_sync/core/client_policy.py; both run clients/vectors/policy.json).
 * The client feeds it what happened and does what comes back:
 *   opening(token, nowMs)        -> null | {action: "give_up", code, reason}
 *   tokenFailed(error)           -> {action: "reconnect", attempt, delayMs, code, reason}
 *   connected(exp, nowMs)        -> null | {action: "refresh_in", delayMs} | {action: "lapse", reason}
 *   subscribed()                 (every subscription confirmed: a working session)
 *   closed(code, reason)         -> {action: "reconnect", …} | {action: "give_up", code, reason}
 *   frameReceived(nowMs), deliveryStarted(), deliveryDone(nowMs)
 *   watchdog(nowMs)              -> {action: "ping", checkAt} | {action: "wait", checkAt} | {action: "drop"}
 *   refreshed(exp, nowMs)        -> like connected
 *   refreshToken(token, nowMs)   -> {action: "send_refresh", token} | {action: "refresh_in", delayMs} | {action: "lapse", reason}
 * `exp` is the server's Unix time in seconds; every other time is in milliseconds.
 */
export class ClientPolicy {
  /** @param {{backoffBaseMs: number, backoffCapMs: number, pingIntervalMs: number,
   *   pingTimeoutMs: number, renewableToken: boolean, random?: function():number}} options */
  constructor({ backoffBaseMs, backoffCapMs, pingIntervalMs, pingTimeoutMs, renewableToken, random = Math.random }) {
    this.baseMs = backoffBaseMs;
    this.capMs = backoffCapMs;
    this.pingIntervalMs = pingIntervalMs;
    this.pingTimeoutMs = pingTimeoutMs;
    this.renewable = renewableToken;
    this.random = random;
    this.attempt = 0; // the backoff exponent of the next retry
    this.refused = null;
    this.session = ClientPolicy._session("", 0);
  }

  static _session(token, nowMs) {
    return {
      token, // the one it opened with: remembered if the server refuses it
      current: token, // the one in force after refreshes
      stable: false, // every subscription was confirmed
      silent: false, // dropped by the watchdog
      delivering: false, // blocked on a slow consumer: that is not silence
      lastRx: nowMs,
      pingedAt: null,
      expiresAt: null,
    };
  }

  opening(token, nowMs) {
    if (token === this.refused) {
      return { action: "give_up", code: CloseCode.UNAUTHORIZED, reason: "the token provider returned the refused token again" };
    }
    this.session = ClientPolicy._session(token, nowMs);
    return null;
  }

  tokenFailed(error) {
    this.session = ClientPolicy._session("", 0);
    return this._backoff(null, `token provider failed: ${error}`, false);
  }

  connected(exp, nowMs) {
    this.refused = null;
    return this._planRefresh(exp, nowMs);
  }

  subscribed() {
    this.session.stable = true;
  }

  closed(code, reason) {
    const session = this.session;
    if (session.silent) [code, reason] = [ABNORMAL_CLOSURE, SILENT_REASON];
    // A working session resets the backoff; one closed before it was subscribed (or for
    // sending too much) does not, so a close right after `connected` cannot spin.
    if (session.stable && !THROTTLE_CLOSE_CODES.has(code)) this.attempt = 0;
    if (AUTH_CLOSE_CODES.has(code)) {
      this.refused = session.token;
      if (!this.renewable) return { action: "give_up", code, reason };
      if (this.attempt === 0) {
        // A fresh token usually fixes it: ask for one and try at once, once.
        this.attempt = 1;
        return { action: "reconnect", attempt: 0, delayMs: 0, code, reason };
      }
    }
    return this._backoff(code, reason, THROTTLE_CLOSE_CODES.has(code));
  }

  _backoff(code, reason, throttled) {
    const delayMs = backoffDelay(this.attempt, { baseMs: this.baseMs, capMs: this.capMs, random: this.random });
    const decision = { action: "reconnect", attempt: this.attempt + 1, delayMs, code, reason };
    this.attempt += throttled ? 2 : 1;
    return decision;
  }

  frameReceived(nowMs) {
    this.session.lastRx = nowMs;
    this.session.pingedAt = null;
  }

  deliveryStarted() {
    this.session.delivering = true;
  }

  deliveryDone(nowMs) {
    this.session.delivering = false;
    this.frameReceived(nowMs);
  }

  /** After pingIntervalMs without a frame, ping; without an answer within pingTimeoutMs, drop. */
  watchdog(nowMs) {
    const session = this.session;
    if (session.delivering) this.frameReceived(nowMs);
    if (session.pingedAt === null) {
      const due = session.lastRx + this.pingIntervalMs;
      if (nowMs < due) return { action: "wait", checkAt: due };
      session.pingedAt = nowMs;
      return { action: "ping", checkAt: nowMs + this.pingTimeoutMs };
    }
    const due = session.pingedAt + this.pingTimeoutMs;
    if (nowMs < due) return { action: "wait", checkAt: due };
    session.silent = true;
    return { action: "drop" };
  }

  refreshed(exp, nowMs) {
    return this._planRefresh(exp, nowMs);
  }

  /** Only a token function can give a newer token, and only a later expiry is worth another
   * round (a function returning the same token would loop). */
  _planRefresh(exp, nowMs) {
    if (!this.renewable || typeof exp !== "number" || !Number.isFinite(exp)) return null;
    const session = this.session;
    if (session.expiresAt !== null && exp <= session.expiresAt) {
      return { action: "lapse", reason: "the refresh gave no later expiry" };
    }
    session.expiresAt = exp;
    return { action: "refresh_in", delayMs: refreshDelayMs(exp, nowMs) };
  }

  /** The token function answered `token` for the planned refresh. One still handing out the
   * current token (it caches tokens until shortly before expiry) is asked again halfway to
   * the expiry, until a second is left. */
  refreshToken(token, nowMs) {
    const session = this.session;
    if (token !== session.current) {
      session.current = token;
      return { action: "send_refresh", token };
    }
    const remainingMs = (session.expiresAt ?? 0) * 1000 - nowMs;
    if (remainingMs < REFRESH_RETRY_MIN_MS) return { action: "lapse", reason: "the token provider gave no new token before expiry" };
    return { action: "refresh_in", delayMs: remainingMs / 2 };
  }
}

/** The last `size` event ids seen, for dropping duplicates across reconnects. The least
 * recently *seen* id is evicted (not the first inserted): an id that keeps coming back is
 * still in some replay buffer, so it is the one worth remembering. */
export class RecentIds {
  constructor(size) {
    this.size = size;
    this.ids = new Set(); // iteration order = least recently seen first
  }
  /** True if seen before; remembers it (as the most recent) either way. */
  seen(id) {
    const before = this.ids.delete(id);
    this.ids.add(id);
    if (this.ids.size > this.size) this.ids.delete(this.ids.values().next().value);
    return before;
  }
}

export class TokenRefusedError extends Error {
  constructor(code, reason) {
    super(`token refused by the server (${code}${reason ? " " + reason : ""})`);
    this.name = "TokenRefusedError";
    this.code = code;
    this.reason = reason;
  }
}

export class RealtimeSyncClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.url            ws(s)://host/ws
   * @param {string|function():(string|Promise<string>)} options.token
   * @param {"frame"|"query"} [options.authMode="frame"]
   * @param {boolean} [options.subscribeAll=true]
   * @param {Array<string|number>} [options.taskIds]
   * @param {number} [options.backoffBaseMs=500]
   * @param {number} [options.backoffCapMs=30000]
   * @param {number} [options.pingIntervalMs=20000]  ping after this long without a frame
   * @param {number} [options.pingTimeoutMs=10000]   drop the connection if the ping is unanswered
   * @param {number} [options.openTimeoutMs=10000]   give up on a connection that does not open in time
   * @param {number} [options.maxPending=10000]      updates() items kept for a slow consumer; past it
   *                                                 they are replaced by one resync_required item
   * @param {string} [options.since]                 resume after this event id on the first connect
   * @param {number} [options.dedupeSize=10000]
   * @param {function} [options.WebSocket]           a WebSocket implementation (default: the global one)
   * @param {function():number} [options.random]     for tests: the jitter source
   */
  constructor(options) {
    super();
    const o = { ...options };
    if (!o.url) throw new TypeError("url is required");
    if (!o.token) throw new TypeError("token is required");
    this.url = o.url;
    this.tokenSource = o.token;
    this.authMode = o.authMode ?? "frame";
    if (!["frame", "query"].includes(this.authMode)) throw new TypeError("authMode: frame or query");
    this.subscribeAll = o.subscribeAll ?? !(o.taskIds && o.taskIds.length);
    this.taskIds = [...(o.taskIds ?? [])];
    this.baseMs = o.backoffBaseMs ?? 500;
    this.capMs = o.backoffCapMs ?? 30000;
    if (!(this.baseMs > 0 && this.capMs >= this.baseMs)) throw new RangeError("need 0 < backoffBaseMs <= backoffCapMs");
    this.pingIntervalMs = o.pingIntervalMs ?? 20000;
    this.pingTimeoutMs = o.pingTimeoutMs ?? 10000;
    this.openTimeoutMs = o.openTimeoutMs ?? 10000;
    this.maxPending = o.maxPending ?? 10000;
    this.WebSocketImpl = o.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocketImpl) throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    this.random = o.random ?? Math.random;
    this.dedupe = new RecentIds(o.dedupeSize ?? 10000);
    this.policy = new ClientPolicy({
      backoffBaseMs: this.baseMs,
      backoffCapMs: this.capMs,
      pingIntervalMs: this.pingIntervalMs,
      pingTimeoutMs: this.pingTimeoutMs,
      renewableToken: typeof this.tokenSource === "function",
      random: this.random,
    });
    this.lastEventId = o.since ?? null;
    // The last event's `published_at` (Unix seconds), sent as `since_time` with `since`: a
    // replica that has not got (or no longer has) that id replays by publish time instead.
    this.lastEventTime = null;
    this.state = "closed";
    this.connectionId = null;
    this.userId = null;
    this.connections = 0;
    this.error = null;
    this._running = false;
    this._ws = null;
    this._timer = null;
    this._watchdog = null;
    this._refreshTimer = null;
    this._openTimer = null;
    this._nextId = 0;
    this._queue = [];
    this._waiters = [];
    this._iterators = 0;
  }

  /** Start connecting (idempotent). */
  start() {
    if (this._running) return this;
    this._running = true;
    this.error = null;
    this._setState(this.connections ? "reconnecting" : "connecting");
    this._connect();
    return this;
  }

  /** Close for good: no more reconnects; a pending `updates()` iteration ends. */
  close() {
    this._running = false;
    clearTimeout(this._timer);
    this._drop(NORMAL_CLOSURE, "client closed");
    this._setState("closed");
    this._push(null);
  }

  /**
   * An async iterator over updates ({type:"task_update",…}, including the
   * action "task_access_revoked") and {type:"resync_required"} items.
   * Items are only queued while an iterator exists, so event-listener users never pile them up.
   */
  updates() {
    // Counted from now, so updates that arrive before the first next() are kept (bounded
    // by maxPending, also for an iterator that is never read).
    this._iterators += 1;
    const self = this;
    return (async function* iterate() {
      try {
        for (;;) {
          const item = self._queue.length ? self._queue.shift() : await new Promise((r) => self._waiters.push(r));
          if (item === null) {
            if (self.error) throw self.error;
            return;
          }
          yield item;
        }
      } finally {
        self._iterators -= 1;
      }
    })();
  }

  // -- internals ------------------------------------------------------------------------------

  _push(item) {
    if (this._iterators === 0) return;
    const waiter = this._waiters.shift();
    if (waiter) waiter(item);
    else if (item !== null && this._queue.length >= this.maxPending) {
      // The consumer fell behind: what it missed is gone, as after a server-side gap.
      this._queue = [{ type: "resync_required", reason: "the updates() consumer fell behind" }];
    } else this._queue.push(item);
  }

  _setState(state, detail = {}) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
    if (state === "reconnecting" && detail.delayMs !== undefined) {
      this.dispatchEvent(new CustomEvent("reconnect", { detail }));
    }
  }

  async _token() {
    const source = this.tokenSource;
    const token = typeof source === "function" ? await source() : source;
    if (typeof token !== "string" || !token) throw new Error("the token provider returned no token");
    return token;
  }

  async _connect() {
    let token;
    try {
      token = await this._token();
    } catch (err) {
      // The provider's outage (the auth service is down too): back off and ask again.
      if (this._running) this._act(this.policy.tokenFailed(err && err.message));
      return;
    }
    if (!this._running) return;
    const refusal = this.policy.opening(token, Date.now());
    if (refusal) {
      this._act(refusal);
      return;
    }
    let url = this.url;
    if (this.authMode === "query") url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    let ws;
    try {
      ws = new this.WebSocketImpl(url);
    } catch (err) {
      this._act(this.policy.closed(null, String(err && err.message)));
      return;
    }
    this._ws = ws;
    const pending = new Set(); // ids of this connection's unconfirmed subscribe messages
    clearTimeout(this._openTimer);
    this._openTimer = setTimeout(() => {
      if (this._ws !== ws) return;
      this._drop(GIVEN_UP, "open timeout");
      this._onClosed(null, "open timeout");
    }, this.openTimeoutMs);
    ws.onopen = () => {
      clearTimeout(this._openTimer);
      if (this._ws !== ws) return;
      this.policy.frameReceived(Date.now());
      if (this.authMode === "frame") this._send(ws, { type: "auth", token });
      this._watch(ws);
    };
    ws.onmessage = (event) => {
      if (this._ws !== ws) return;
      this.policy.frameReceived(Date.now());
      let frame;
      try {
        frame = JSON.parse(typeof event.data === "string" ? event.data : String(event.data));
      } catch {
        return;
      }
      if (frame && typeof frame === "object") this._onFrame(ws, pending, frame);
    };
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._onClosed(event.code, event.reason);
    };
  }

  _onClosed(code, reason) {
    this._ws = null;
    this._clearTimers();
    if (this._running) this._act(this.policy.closed(code, reason));
  }

  /** Carry out what the policy decided after a connection ended (or could not start). */
  _act(decision) {
    if (decision.action === "give_up") {
      this._fail(new TokenRefusedError(decision.code, decision.reason));
      return;
    }
    const { attempt, delayMs, code, reason } = decision;
    this.state = null; // always announce each scheduled attempt
    this._setState("reconnecting", { attempt, delayMs, code, reason });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      if (this._running) this._connect();
    }, delayMs);
  }

  _fail(err) {
    this.error = err;
    this._running = false;
    this._setState("closed");
    this.dispatchEvent(new CustomEvent("error", { detail: err }));
    this._push(null);
  }

  _clearTimers() {
    clearTimeout(this._watchdog);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._openTimer);
  }

  _drop(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._clearTimers();
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        /* already closing */
      }
    }
  }

  /** Ask the policy's watchdog now, and again when it says. */
  _watch(ws) {
    const decision = this.policy.watchdog(Date.now());
    if (decision.action === "drop") {
      // Silent: do not wait for a close handshake that may never come.
      this._drop(GIVEN_UP, SILENT_REASON);
      this._onClosed(null, SILENT_REASON);
      return;
    }
    if (decision.action === "ping") this._send(ws, { type: "ping" });
    const delayMs = Math.min(MAX_TIMER_MS, Math.max(0, decision.checkAt - Date.now()));
    this._watchdog = setTimeout(() => {
      if (this._ws === ws) this._watch(ws);
    }, delayMs);
  }

  /** Carry out a refresh decision of the policy on the live connection `ws`. */
  _refresh(ws, decision) {
    if (decision === null || decision.action === "lapse") return; // 4002 at expiry, then a reconnect
    if (decision.action === "send_refresh") {
      this._send(ws, { type: "refresh", token: decision.token });
      return;
    }
    this._refreshIn(ws, decision.delayMs);
  }

  _refreshIn(ws, delayMs) {
    clearTimeout(this._refreshTimer);
    if (delayMs > MAX_TIMER_MS) {
      // setTimeout fires at once past ~24.8 days: wait in steps.
      this._refreshTimer = setTimeout(() => this._refreshIn(ws, delayMs - MAX_TIMER_MS), MAX_TIMER_MS);
      return;
    }
    this._refreshTimer = setTimeout(async () => {
      if (this._ws !== ws) return;
      let token;
      try {
        token = await this._token();
      } catch {
        return; // the server closes with 4002 at expiry; the reconnect asks again
      }
      if (this._ws === ws) this._refresh(ws, this.policy.refreshToken(token, Date.now()));
    }, delayMs);
  }

  _send(ws, frame) {
    this._nextId += 1;
    frame.id = this._nextId;
    try {
      ws.send(JSON.stringify(frame));
    } catch {
      /* the close event follows */
    }
    return frame.id;
  }

  _onFrame(ws, pending, frame) {
    switch (frame.type) {
      case "connected": {
        this.connections += 1;
        this.connectionId = frame.connection_id;
        this.userId = frame.user_id;
        this._refresh(ws, this.policy.connected(frame.exp, Date.now()));
        const targets = this.subscribeAll ? [{ all: true }] : this.taskIds.map((taskId) => ({ taskId }));
        for (const target of targets) {
          const msg = { type: "subscribe", ...target };
          if (this.lastEventId !== null) {
            msg.since = this.lastEventId;
            if (this.lastEventTime !== null) msg.since_time = this.lastEventTime;
          }
          pending.add(this._send(ws, msg));
        }
        this.dispatchEvent(new CustomEvent("connected", { detail: frame }));
        break;
      }
      case "task_update": {
        if (frame.event_id === undefined || this.dedupe.seen(String(frame.event_id))) return;
        this.lastEventId = String(frame.event_id);
        this.lastEventTime = typeof frame.published_at === "number" ? frame.published_at : null;
        // A task no longer shared with this user: its own event, so "update" listeners only
        // ever see task data; drop the task (and any cached copy) on it.
        const name = frame.action === "task_access_revoked" ? "accessRevoked" : "update";
        this.dispatchEvent(new CustomEvent(name, { detail: frame }));
        this._push(frame);
        break;
      }
      case "resync_required":
        this._setState("resyncing");
        this.dispatchEvent(new CustomEvent("resync", { detail: frame }));
        this._push(frame);
        break;
      case "subscribed":
        pending.delete(frame.id);
        if (pending.size === 0) {
          this.policy.subscribed();
          this._setState("connected");
        }
        break;
      case "refreshed":
        this._refresh(ws, this.policy.refreshed(frame.exp, Date.now()));
        break;
      case "error":
        this.dispatchEvent(new CustomEvent("servererror", { detail: frame }));
        break;
      default:
        break;
    }
  }
}
