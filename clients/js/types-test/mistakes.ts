// Mistakes the declarations must turn into compile errors. Each `@ts-expect-error` fails
// the build if the line below it compiles, so loosening a declaration breaks `tsc -p`.
import {
  type ConnectionState,
  RealtimeSyncClient,
  type TaskUpdate,
  type WebSocketConstructor,
} from "realtime-sync-client";

// Not a mistake: the browser's WebSocket is what the `WebSocket` option takes by default.
export const browserWebSocket: WebSocketConstructor = WebSocket;

export function mistakes(update: TaskUpdate): void {
  // @ts-expect-error a misspelt option (backofBaseMs)
  new RealtimeSyncClient({ url: "wss://example.test/ws", token: "t", backofBaseMs: 10 });
  // @ts-expect-error an unknown auth mode
  new RealtimeSyncClient({ url: "wss://example.test/ws", token: "t", authMode: "header" });
  // @ts-expect-error the token is required
  new RealtimeSyncClient({ url: "wss://example.test/ws" });
  const client = new RealtimeSyncClient({ url: "wss://example.test/ws", token: () => "t" });
  // @ts-expect-error a wrong event name (the event is "update")
  client.addEventListener("updates", () => undefined);
  // @ts-expect-error a wrong event name (the event is "resync")
  client.removeEventListener("resync_required", null);
  // @ts-expect-error the state event's detail is a state name, not a number
  client.addEventListener("state", (event) => event.detail.toFixed());
  // @ts-expect-error not a state name
  const state: ConnectionState = "open";
  // @ts-expect-error the frame's field is task_id
  const taskId: string = update.taskId;
  // @ts-expect-error frames are read-only
  update.event_id = "e1";
  void state;
  void taskId;
}
