// A strict-mode program that uses every public surface of the client, as a frontend would.
// Imported by its package name, so the `exports` map (and its `types`) is what resolves it.
// test/types-example.test.mjs compiles it with tsc and runs `run()` against the live service.
import {
  type AccessRevoked,
  AUTH_CLOSE_CODES,
  type BackoffOptions,
  ClientPolicy,
  CloseCode,
  type Connected,
  type ConnectionState,
  type ConsumerFellBehind,
  RealtimeSyncClient,
  type RealtimeSyncClientOptions,
  type RealtimeSyncEventMap,
  type RealtimeSyncEventName,
  type ReconnectDetail,
  RecentIds,
  type ResyncRequired,
  type ResyncReason,
  type ServerError,
  type ServerErrorCode,
  type TaskAction,
  type TaskId,
  type TaskUpdate,
  THROTTLE_CLOSE_CODES,
  type TokenSource,
  TokenRefusedError,
  type WebSocketConstructor,
  backoffDelay,
  refreshDelayMs,
} from "realtime-sync-client";

export interface ExampleConfig {
  url: string;
  token: () => Promise<string>;
  WebSocket: WebSocketConstructor;
  /** Publishes a change of `taskId` for the token's user; resolves to the event id. */
  publish: (taskId: TaskId) => Promise<string>;
}

export interface ExampleResult {
  states: ConnectionState[];
  connected: Connected;
  update: TaskUpdate;
  iterated: TaskUpdate;
  action: TaskAction;
  reconnects: ReconnectDetail[];
  serverErrors: ServerErrorCode[];
  resyncs: ResyncRequired[];
  stopped: TokenRefusedError | null;
  retryInMs: number;
  refreshInMs: number;
  closeCodes: { auth: CloseCode[]; throttle: CloseCode[] };
  /** What a policy of the same options decides after a throttling close. */
  afterThrottle: number;
  duplicateDropped: boolean;
}

/** A policy on its own, as a test of a custom transport would drive it. */
function throttledDelay(): number {
  const policy = new ClientPolicy({
    backoffBaseMs: 100,
    backoffCapMs: 1_000,
    pingIntervalMs: 20_000,
    pingTimeoutMs: 10_000,
    renewableToken: true,
    random: () => 1,
  });
  const decision = policy.closed(CloseCode.TOO_MANY, "too many messages");
  return decision.action === "reconnect" ? decision.delayMs : -1;
}

function dropsRepeats(eventId: string): boolean {
  const recent = new RecentIds(2);
  return !recent.seen(eventId) && recent.seen(eventId);
}

/** What a screen would do with each item of `updates()`. */
function describe(item: TaskUpdate | AccessRevoked | ResyncRequired | ConsumerFellBehind): string {
  if (item.type === "task_update" && item.action === "task_access_revoked") {
    return `drop task ${item.task_id}`;
  }
  if (item.type === "task_update") return `${item.action} ${item.task_id}`;
  if ("since" in item) {
    const why: ResyncReason | undefined = item.reason;
    return `refetch after ${item.since}${why === undefined ? "" : ` (${why})`}`;
  }
  return `refetch: ${item.reason}`;
}

function isCloseCode(code: number): code is CloseCode {
  return [1000, 1001, 1006, 1009, 4000, 4001, 4002, 4008, 4010, 4029].includes(code);
}

export async function run(config: ExampleConfig): Promise<ExampleResult> {
  const token: TokenSource = config.token;
  const options: RealtimeSyncClientOptions = {
    url: config.url,
    token,
    authMode: "frame",
    subscribeAll: true,
    taskIds: [],
    backoffBaseMs: 50,
    backoffCapMs: 400,
    pingIntervalMs: 20_000,
    pingTimeoutMs: 10_000,
    openTimeoutMs: 5_000,
    maxPending: 100,
    dedupeSize: 1_000,
    WebSocket: config.WebSocket,
    random: Math.random,
  };
  const client = new RealtimeSyncClient(options);

  const states: ConnectionState[] = [];
  const updates: TaskUpdate[] = [];
  const reconnects: ReconnectDetail[] = [];
  const serverErrors: ServerErrorCode[] = [];
  const resyncs: ResyncRequired[] = [];
  // Set by listeners: an object, so the checker does not narrow them to their initial null.
  const seen: { connected: Connected | null; stopped: TokenRefusedError | null } = {
    connected: null,
    stopped: null,
  };

  client.addEventListener("state", (event) => states.push(event.detail));
  client.addEventListener("update", (event) => updates.push(event.detail));
  client.addEventListener("resync", (event) => resyncs.push(event.detail));
  const revoked: TaskId[] = [];
  client.addEventListener("accessRevoked", (event) => revoked.push(event.detail.task_id));
  client.addEventListener("reconnect", (event) => reconnects.push(event.detail));
  client.addEventListener("connected", (event) => (seen.connected = event.detail));
  client.addEventListener("servererror", (event: RealtimeSyncEventMap["servererror"]) => {
    const frame: ServerError = event.detail;
    serverErrors.push(frame.code);
  });
  const onError = {
    handleEvent(event: CustomEvent<TokenRefusedError>): void {
      seen.stopped = event.detail;
    },
  };
  const errorEvent: RealtimeSyncEventName = "error";
  client.addEventListener(errorEvent, onError);

  const iterator = client.updates();
  client.start();
  try {
    const first = iterator.next(); // live from updates(): nothing published after it is lost
    await until(() => client.state === "connected");
    const eventId = await config.publish(42);
    const item = await first;
    if (item.done || item.value.type !== "task_update" || item.value.action === "task_access_revoked") {
      throw new Error(`expected a task update, got ${item.done ? "the end" : describe(item.value)}`);
    }
    await until(() => updates.length > 0);
    const update = updates[0];
    if (update === undefined || update.event_id !== eventId || client.lastEventId !== eventId) {
      throw new Error("the listener and updates() disagree");
    }
    const published: number | undefined = update.published_at;
    if (published !== undefined && client.lastEventTime !== published) {
      throw new Error("the client keeps the last event's published_at for since_time");
    }
    if (!(client.error === null || client.error instanceof TokenRefusedError)) throw client.error;
    const connected = seen.connected;
    if (connected === null) throw new Error("no connected event");
    const backoff: BackoffOptions = { baseMs: 100, capMs: 1_000, random: () => 0.5 };
    return {
      states,
      connected,
      update,
      iterated: item.value,
      action: update.action,
      reconnects,
      serverErrors,
      resyncs,
      stopped: seen.stopped,
      retryInMs: backoffDelay(3, backoff),
      refreshInMs: refreshDelayMs(connected.exp, Date.now()),
      closeCodes: {
        auth: [...AUTH_CLOSE_CODES].filter(isCloseCode),
        throttle: [...THROTTLE_CLOSE_CODES].filter(isCloseCode),
      },
      afterThrottle: throttledDelay(),
      duplicateDropped: client.policy instanceof ClientPolicy && dropsRepeats(update.event_id),
    };
  } finally {
    client.removeEventListener(errorEvent, onError);
    client.close();
  }
}

async function until(condition: () => boolean, timeoutMs = 8_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
