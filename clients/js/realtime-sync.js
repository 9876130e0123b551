// realtime-sync browser client: one dependency-free ES module.
//
//   import { RealtimeSyncClient } from "/client/realtime-sync.js";
//   const client = new RealtimeSyncClient({ url: "wss://example.com/ws", token: () => getJwt() });
//   client.addEventListener("update", (e) => render(e.detail));      // a task_update frame
//   client.addEventListener("resync", () => refetchFromTaskApi());   // missed updates are gone
//   client.addEventListener("state", (e) => showStatus(e.detail));   // connecting|connected|reconnecting|resyncing|closed
//   client.start();
//   // or: for await (const item of client.updates()) { ... }
//
// Behaviour (the same as the Python client, realtime_sync/client.py):
// - the token is a string or a (possibly async) function, asked again before every connection
//   attempt; by default it travels in the first frame ({"type":"auth"}), never in the URL;
//   `authMode: "query"` puts it in `?token=` instead;
// - 4001/4002 closes mean "get a fresh token": a refused token is never sent again;
// - reconnects use exponential backoff with full jitter: uniform(0, min(cap, base * 2^attempt)),
//   started over only after a session whose subscriptions were all confirmed (not closed 4029);
//   a token function that throws is retried with the same backoff; a connection that does not
//   open within openTimeoutMs is given up and retried;
// - after a reconnect it subscribes again with `since` = the last event id seen, so the server
//   replays what was missed; duplicate event ids are dropped;
// - a watchdog pings a silent connection and replaces it when the ping goes unanswered;
// - with a token function, a live connection outlives its token: before the expiry the server
//   announced (`exp` in `connected` / `refreshed`), the function is asked for a new token, sent
//   in a {"type":"refresh"} frame; if that fails the server closes with 4002 (see above).

export const AUTH_CLOSE_CODES = new Set([4001, 4002]);
export const THROTTLE_CLOSE_CODES = new Set([4029]);
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

export class TokenRefusedError extends Error {
  constructor(code, reason) {
    super(`token refused by the server (${code}${reason ? " " + reason : ""})`);
    this.name = "TokenRefusedError";
    this.code = code;
    this.reason = reason;
  }
}

class Dedupe {
  constructor(size) {
    this.size = size;
    this.ids = new Set();
  }
  /** True if seen before; remembers it otherwise (insertion order = age). */
  seen(id) {
    if (this.ids.has(id)) return true;
    this.ids.add(id);
    if (this.ids.size > this.size) this.ids.delete(this.ids.values().next().value);
    return false;
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
    this.dedupe = new Dedupe(o.dedupeSize ?? 10000);
    this.lastEventId = o.since ?? null;
    this.state = "closed";
    this.connectionId = null;
    this.userId = null;
    this.connections = 0;
    this.error = null;
    this._attempt = 0;
    this._running = false;
    this._ws = null;
    this._timer = null;
    this._watchdog = null;
    this._refreshTimer = null;
    this._openTimer = null;
    this._refusedToken = null;
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
    this._drop(1000, "client closed");
    this._setState("closed");
    this._push(null);
  }

  /**
   * An async iterator over updates ({type:"task_update",…}) and {type:"resync_required"} items.
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
      if (this._running) this._scheduleReconnect(null, `token provider failed: ${err && err.message}`, false);
      return;
    }
    if (token === this._refusedToken) {
      this._fail(new TokenRefusedError(4001, "the token provider returned the refused token again"));
      return;
    }
    if (!this._running) return;
    let url = this.url;
    if (this.authMode === "query") url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
    let ws;
    try {
      ws = new this.WebSocketImpl(url);
    } catch (err) {
      this._scheduleReconnect(null, String(err && err.message), false);
      return;
    }
    this._ws = ws;
    clearTimeout(this._openTimer);
    this._openTimer = setTimeout(() => {
      if (this._ws !== ws) return;
      this._drop(4000, "open timeout");
      this._onClosed(session, null, "open timeout");
    }, this.openTimeoutMs);
    const session = {
      connected: false,
      pending: new Set(),
      token, // the one this connection opened with (remembered if refused)
      current: token, // the one in force after refreshes
      lastRx: Date.now(),
      pingedAt: null,
      silent: false,
      stable: false, // every subscription confirmed
      expiresAt: null,
    };
    ws.onopen = () => {
      clearTimeout(this._openTimer);
      if (this._ws !== ws) return;
      session.lastRx = Date.now();
      if (this.authMode === "frame") this._send(ws, { type: "auth", token });
      this._startWatchdog(ws, session);
    };
    ws.onmessage = (event) => {
      if (this._ws !== ws) return;
      session.lastRx = Date.now();
      let frame;
      try {
        frame = JSON.parse(typeof event.data === "string" ? event.data : String(event.data));
      } catch {
        return;
      }
      if (frame && typeof frame === "object") this._onFrame(ws, session, frame);
    };
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._onClosed(session, event.code, event.reason);
    };
  }

  _onClosed(session, code, reason) {
    this._ws = null;
    clearInterval(this._watchdog);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._openTimer);
    if (!this._running) return;
    if (session.silent) code = 4000; // our own: the ping went unanswered
    // A working session resets the backoff; one closed before it was subscribed (or for
    // sending too much) does not, so a close right after `connected` cannot spin.
    if (session.stable && !THROTTLE_CLOSE_CODES.has(code)) this._attempt = 0;
    if (AUTH_CLOSE_CODES.has(code)) {
      this._refusedToken = session.token;
      if (typeof this.tokenSource !== "function") {
        this._fail(new TokenRefusedError(code, reason));
        return;
      }
      if (this._attempt === 0) {
        // A fresh token usually fixes it: ask for one and try at once, once.
        this._attempt = 1;
        this._setState("reconnecting", { attempt: 0, delayMs: 0, code, reason });
        this._connect();
        return;
      }
    }
    this._scheduleReconnect(code, session.silent ? "ping unanswered" : reason, THROTTLE_CLOSE_CODES.has(code));
  }

  _scheduleReconnect(code, reason, throttled) {
    const delayMs = backoffDelay(this._attempt, { baseMs: this.baseMs, capMs: this.capMs, random: this.random });
    this._attempt += throttled ? 2 : 1;
    this.state = null; // always announce each scheduled attempt
    this._setState("reconnecting", { attempt: this._attempt, delayMs, code, reason });
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

  _drop(code, reason) {
    const ws = this._ws;
    this._ws = null;
    clearInterval(this._watchdog);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._openTimer);
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        /* already closing */
      }
    }
  }

  _startWatchdog(ws, session) {
    clearInterval(this._watchdog);
    const tick = Math.max(50, Math.min(this.pingIntervalMs, this.pingTimeoutMs) / 4);
    this._watchdog = setInterval(() => {
      if (this._ws !== ws) return;
      const now = Date.now();
      if (session.pingedAt !== null && session.lastRx >= session.pingedAt) session.pingedAt = null;
      if (session.pingedAt === null && now - session.lastRx >= this.pingIntervalMs) {
        session.pingedAt = now;
        this._send(ws, { type: "ping" });
      } else if (session.pingedAt !== null && now - session.pingedAt >= this.pingTimeoutMs) {
        // Silent: do not wait for a close handshake that may never come.
        session.silent = true;
        this._drop(4000, "ping unanswered");
        this._onClosed(session, 4000, "ping unanswered");
      }
    }, tick);
  }

  /** Plan the next refresh for a token expiring at `exp` (from `connected` or `refreshed`).
   * Only a token function can give a newer token, and only a later expiry is worth another
   * round (a function returning the same token would loop). */
  _planRefresh(ws, session, exp) {
    if (typeof this.tokenSource !== "function" || typeof exp !== "number" || !Number.isFinite(exp)) return;
    if (session.expiresAt !== null && exp <= session.expiresAt) return; // let it lapse: 4002, reconnect
    session.expiresAt = exp;
    this._refreshIn(ws, session, refreshDelayMs(exp, Date.now()));
  }

  /** Send the token function's next token after `delayMs`. A function still handing out the
   * current token (it caches tokens until shortly before expiry) is asked again halfway to
   * the expiry, until a second is left; then the token lapses into 4002 and a reconnect. */
  _refreshIn(ws, session, delayMs) {
    clearTimeout(this._refreshTimer);
    if (delayMs > MAX_TIMER_MS) {
      // setTimeout fires at once past ~24.8 days: wait in steps.
      this._refreshTimer = setTimeout(() => this._refreshIn(ws, session, delayMs - MAX_TIMER_MS), MAX_TIMER_MS);
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
      if (this._ws !== ws) return;
      if (token !== session.current) {
        session.current = token;
        this._send(ws, { type: "refresh", token });
        return;
      }
      const remainingMs = session.expiresAt * 1000 - Date.now();
      if (remainingMs >= 1000) this._refreshIn(ws, session, remainingMs / 2);
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

  _onFrame(ws, session, frame) {
    switch (frame.type) {
      case "connected": {
        session.connected = true;
        this.connections += 1;
        this.connectionId = frame.connection_id;
        this.userId = frame.user_id;
        this._refusedToken = null;
        this._planRefresh(ws, session, frame.exp);
        const targets = this.subscribeAll ? [{ all: true }] : this.taskIds.map((taskId) => ({ taskId }));
        for (const target of targets) {
          const msg = { type: "subscribe", ...target };
          if (this.lastEventId !== null) msg.since = this.lastEventId;
          session.pending.add(this._send(ws, msg));
        }
        this.dispatchEvent(new CustomEvent("connected", { detail: frame }));
        break;
      }
      case "task_update": {
        if (frame.event_id === undefined || this.dedupe.seen(String(frame.event_id))) return;
        this.lastEventId = String(frame.event_id);
        this.dispatchEvent(new CustomEvent("update", { detail: frame }));
        this._push(frame);
        break;
      }
      case "resync_required":
        this._setState("resyncing");
        this.dispatchEvent(new CustomEvent("resync", { detail: frame }));
        this._push(frame);
        break;
      case "subscribed":
        session.pending.delete(frame.id);
        if (session.pending.size === 0) {
          session.stable = true;
          this._setState("connected");
        }
        break;
      case "refreshed":
        this._planRefresh(ws, session, frame.exp);
        break;
      case "error":
        this.dispatchEvent(new CustomEvent("servererror", { detail: frame }));
        break;
      default:
        break;
    }
  }
}
