// Type declarations for realtime-sync.js, the browser client of the realtime-sync service.
//
// Written so that mistakes fail to compile: the options interface has no index signature
// (a misspelt option is an excess-property error) and addEventListener has no `string`
// fallback (a wrong event name has no overload). The frames follow docs/asyncapi.yaml.
// The client needs the DOM library ("lib": ["DOM", ...]) for EventTarget and CustomEvent.

/** A task id: an integer or a string, matched by its string form. */
export type TaskId = string | number;

/** What the server made of the publisher's event type (`task_unknown_event` for any other). */
export type TaskAction =
  | "task_created"
  | "task_updated"
  | "task_status_changed"
  | "task_deleted"
  | "task_restored"
  | "task_unknown_event";

/** A message id the client put on a frame, echoed in the reply. */
export type MessageId = string | number;

/** A task changed (the `task_update` frame). */
export interface TaskUpdate {
  readonly type: "task_update";
  readonly action: TaskAction;
  /** The publisher's event type, e.g. `TASK_CHANGED`. */
  readonly event_type: string;
  /** The dedupe and resume (`since`) key. */
  readonly event_id: string;
  readonly task_id: TaskId;
  readonly user_id: string;
  /** The task; null when the event carried none. */
  readonly data: Readonly<Record<string, unknown>> | null;
  /** ISO 8601. */
  readonly timestamp: string;
  readonly metadata: Readonly<Record<string, unknown>> | null;
  /** When the event was published (Unix seconds, the same on every replica); the client
   * sends the last one as `since_time` when it resumes. Absent if the envelope had none. */
  readonly published_at?: number;
}

/** The user lost access to a task (no longer shared with them): drop it and any copy
 * kept locally. Carries no task data. */
export interface AccessRevoked {
  readonly type: "task_update";
  readonly action: "task_access_revoked";
  /** The share-list change that removed the user (also a `since` key). */
  readonly event_id: string;
  readonly task_id: TaskId;
}

/** Why the server could not replay: `since` unknown here and no `since_time`
 * (`unknown_position`), the history it needs was trimmed or predates this replica's run
 * (`window_ended`), or an event for the user was acknowledged but lost (`hole`). */
export type ResyncReason = "unknown_position" | "window_ended" | "hole";

/** The server could not replay what was missed since `since`: refetch from the task API. */
export interface ResyncRequired {
  readonly type: "resync_required";
  readonly since: string;
  /** Absent from servers older than the reason. */
  readonly reason?: ResyncReason;
  readonly all?: true;
  readonly taskId?: TaskId;
  readonly id?: MessageId;
}

/** Yielded by `updates()` in place of the items a slow consumer did not read in time
 * (more than `maxPending`): as after a server-side gap, refetch from the task API. */
export interface ConsumerFellBehind {
  readonly type: "resync_required";
  readonly reason: string;
}

/** The server accepted the token (the `connected` frame). */
export interface Connected {
  readonly type: "connected";
  readonly connection_id: string;
  readonly user_id: string;
  readonly heartbeat_s: number;
  /** Token expiry (Unix time); a token function is asked for a new token before it. */
  readonly exp: number;
}

/** The code of an `error` frame: a bad client frame, the connection stays open. */
export type ServerErrorCode =
  | "bad_json"
  | "bad_message"
  | "bad_frame"
  | "unknown_type"
  | "too_many_subscriptions"
  | "already_authenticated"
  | "refresh_refused";

/** A bad client frame (the `error` frame); the connection stays open. */
export interface ServerError {
  readonly type: "error";
  readonly code: ServerErrorCode;
  readonly message: string;
  readonly id?: MessageId;
}

/** The client's state, announced by the `state` event. */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "resyncing" | "closed";

/**
 * WebSocket close codes the server sends (docs/asyncapi.yaml `x-close-codes`), and 4000,
 * which the client uses itself when a connection does not open in time or a ping goes
 * unanswered. 1006 (no close frame) comes from the transport.
 * - 1001 the server is shutting down: reconnect with backoff, resume with `since`;
 * - 1009 a client frame was larger than the server's MAX_FRAME_BYTES;
 * - 4001 missing, invalid or expired token; 4002 token expired on a live connection;
 * - 4008 slow consumer; 4029 too many connections or frames: back off;
 * - 4010 an event for this user was acknowledged but lost: reconnect and resume, the server
 *   answers `resync_required` (reason `hole`).
 */
export type CloseCode = 1000 | 1001 | 1006 | 1009 | 4000 | 4001 | 4002 | 4003 | 4008 | 4010 | 4029;

/** The close codes the server sends, by name (the server's `CloseCode` table). */
export declare const CloseCode: {
  readonly GOING_AWAY: 1001;
  readonly MESSAGE_TOO_BIG: 1009;
  readonly UNAUTHORIZED: 4001;
  readonly TOKEN_EXPIRED: 4002;
  readonly ACCESS_REVOKED: 4003;
  readonly SLOW_CONSUMER: 4008;
  readonly EVENTS_LOST: 4010;
  readonly TOO_MANY: 4029;
};

/** The closes that mean "get a fresh token". */
export declare const AUTH_CLOSE_CODES: ReadonlySet<number>;
/** The closes that mean "you sent too much": the backoff is not started over. */
export declare const THROTTLE_CLOSE_CODES: ReadonlySet<number>;

/** Milliseconds from `nowMs` until a token expiring at `expSeconds` (Unix time) should be
 * refreshed: a fifth of its remaining life early, at most a minute early. */
export declare function refreshDelayMs(expSeconds: number, nowMs: number): number;

export interface BackoffOptions {
  baseMs: number;
  capMs: number;
  /** The jitter source, uniform in [0, 1) (default `Math.random`). */
  random?: () => number;
}

/** Full-jitter exponential backoff: a uniform delay in [0, min(cap, base * 2^attempt)] ms. */
export declare function backoffDelay(attempt: number, options: BackoffOptions): number;

/** Options of the reconnect policy (the client builds one from its own options). */
export interface ClientPolicyOptions {
  backoffBaseMs: number;
  backoffCapMs: number;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  /** True when the token is a function, which can hand out a newer token. */
  renewableToken: boolean;
  /** The jitter source, uniform in [0, 1) (default `Math.random`). */
  random?: () => number;
}

/** Reconnect after `delayMs`; `attempt` counts the tries since the last working session. */
export interface ReconnectDecision {
  readonly action: "reconnect";
  readonly attempt: number;
  readonly delayMs: number;
  readonly code: number | null;
  readonly reason: string;
}
/** Stop for good (a refused token that cannot be renewed). */
export interface GiveUpDecision {
  readonly action: "give_up";
  readonly code: number;
  readonly reason: string;
}
/** Ask the token function again after `delayMs`. */
export interface RefreshInDecision {
  readonly action: "refresh_in";
  readonly delayMs: number;
}
/** Send this token in a `refresh` frame. */
export interface SendRefreshDecision {
  readonly action: "send_refresh";
  readonly token: string;
}
/** No newer token can be had: let the server close with 4002 at expiry. */
export interface LapseDecision {
  readonly action: "lapse";
  readonly reason: string;
}
/** Watchdog: ping now / look again at `checkAt` (ms) / drop the silent connection. */
export interface PingDecision {
  readonly action: "ping";
  readonly checkAt: number;
}
export interface WaitDecision {
  readonly action: "wait";
  readonly checkAt: number;
}
export interface DropDecision {
  readonly action: "drop";
}
export type RefreshDecision = RefreshInDecision | LapseDecision;

/**
 * The reconnect, backoff, refresh and watchdog decisions, with no timer or socket: the same
 * machine as the Python client's, both tested against one file of vectors. `exp` is the
 * server's Unix time in seconds; every other time is in milliseconds.
 */
export declare class ClientPolicy {
  constructor(options: ClientPolicyOptions);
  opening(token: string, nowMs: number): GiveUpDecision | null;
  tokenFailed(error: unknown): ReconnectDecision;
  connected(exp: number | null | undefined, nowMs: number): RefreshDecision | null;
  /** Every subscription was confirmed: a working session (the backoff starts over after it). */
  subscribed(): void;
  closed(code: number, reason: string): ReconnectDecision | GiveUpDecision;
  frameReceived(nowMs: number): void;
  deliveryStarted(): void;
  deliveryDone(nowMs: number): void;
  watchdog(nowMs: number): PingDecision | WaitDecision | DropDecision;
  refreshed(exp: number | null | undefined, nowMs: number): RefreshDecision | null;
  refreshToken(token: string, nowMs: number): SendRefreshDecision | RefreshDecision;
}

/** The last `size` event ids seen; the least recently seen is evicted. */
export declare class RecentIds {
  constructor(size: number);
  readonly size: number;
  /** True if seen before; remembers it (as the most recent) either way. */
  seen(id: string): boolean;
}

/** The server refused the token (4001/4002) and no new one can be had: the client stops. */
export declare class TokenRefusedError extends Error {
  constructor(code: number, reason?: string);
  readonly name: "TokenRefusedError";
  readonly code: number;
  readonly reason: string | undefined;
}

/** A token, or a (possibly async) function asked for one before every connection attempt
 * and before the current token expires. */
export type TokenSource = string | (() => string | Promise<string>);

/** What the client needs of a WebSocket; the browser's and the `ws` package's both fit. */
export interface WebSocketLike {
  onopen: ((event: never) => unknown) | null;
  onmessage: ((event: never) => unknown) | null;
  onerror: ((event: never) => unknown) | null;
  onclose: ((event: never) => unknown) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface RealtimeSyncClientOptions {
  /** `ws(s)://host/ws` */
  url: string;
  token: TokenSource;
  /** `frame` (default): the token travels in the first frame; `query`: in `?token=`. */
  authMode?: "frame" | "query";
  /** Subscribe to every task the user may see (default: true unless `taskIds` is given). */
  subscribeAll?: boolean;
  taskIds?: readonly TaskId[];
  /** Reconnect backoff (full jitter): base 500 ms, cap 30 s by default. */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** Ping after this long without a frame (default 20 s). */
  pingIntervalMs?: number;
  /** Replace the connection if the ping is unanswered this long (default 10 s). */
  pingTimeoutMs?: number;
  /** Give up on a connection that does not open in time (default 10 s). */
  openTimeoutMs?: number;
  /** `updates()` items kept for a slow consumer (default 10000); past it they are replaced
   * by one `ConsumerFellBehind` item. */
  maxPending?: number;
  /** Resume after this event id on the first connect. */
  since?: string;
  /** How many event ids are remembered to drop duplicates (default 10000). */
  dedupeSize?: number;
  /** A WebSocket implementation (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** For tests: the jitter source. */
  random?: () => number;
}

/** The detail of a `reconnect` event: the next attempt and why the last connection ended. */
export interface ReconnectDetail {
  readonly attempt: number;
  readonly delayMs: number;
  /** The close code (see `CloseCode`), or null when the connection could not be made or the
   * token function failed. */
  readonly code: number | null;
  readonly reason: string;
}

/** Every event the client dispatches, and its `detail`. */
export interface RealtimeSyncEventMap {
  /** A task changed (duplicates already dropped). */
  update: CustomEvent<TaskUpdate>;
  /** A task is no longer shared with this user: drop it (and its cached copy). */
  accessRevoked: CustomEvent<AccessRevoked>;
  /** Missed updates are gone: refetch from the task API. */
  resync: CustomEvent<ResyncRequired>;
  state: CustomEvent<ConnectionState>;
  /** A reconnect is scheduled. */
  reconnect: CustomEvent<ReconnectDetail>;
  connected: CustomEvent<Connected>;
  /** The server answered a frame with an error; the connection stays open. */
  servererror: CustomEvent<ServerError>;
  /** The client stopped for good (the state is `closed`). */
  error: CustomEvent<TokenRefusedError>;
}

export type RealtimeSyncEventName = keyof RealtimeSyncEventMap;

export type RealtimeSyncListener<K extends RealtimeSyncEventName> =
  | ((this: RealtimeSyncClient, event: RealtimeSyncEventMap[K]) => void)
  | { handleEvent(event: RealtimeSyncEventMap[K]): void };

export declare class RealtimeSyncClient extends EventTarget {
  constructor(options: RealtimeSyncClientOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** From the last `connected` frame (null before the first). */
  readonly connectionId: string | null;
  readonly userId: string | null;
  /** How many connections were accepted (`connected`) so far. */
  readonly connections: number;
  /** Why the client stopped for good, if it did. */
  readonly error: TokenRefusedError | null;
  /** The decisions this client carries out. */
  readonly policy: ClientPolicy;
  /** The last event id seen: the `since` of the next subscribe. */
  lastEventId: string | null;
  /** That event's `published_at`: the `since_time` of the next subscribe. */
  lastEventTime: number | null;

  /** Start connecting (idempotent). */
  start(): this;
  /** Close for good: no more reconnects; a pending `updates()` iteration ends. */
  close(): void;
  /** Updates and resync items, queued from this call on; ends when the client closes
   * (throws `TokenRefusedError` if it stopped on a refused token). */
  updates(): AsyncGenerator<
    TaskUpdate | AccessRevoked | ResyncRequired | ConsumerFellBehind,
    void,
    undefined
  >;

  addEventListener<K extends RealtimeSyncEventName>(
    type: K,
    listener: RealtimeSyncListener<K> | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends RealtimeSyncEventName>(
    type: K,
    listener: RealtimeSyncListener<K> | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
