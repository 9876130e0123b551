// The TypeScript example (types-test/example.ts) compiled with tsc and run against the real
// service (started by tests/integration/test_client_js.py), installed the way a consumer
// installs the package: a project whose node_modules holds it.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { mkdtempSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import WebSocket from "ws";

const PACKAGE_DIR = join(dirname(fileURLToPath(import.meta.url)), "..");
const WS_URL = process.env.RS_WS_URL;
const PUBLISH_URL = process.env.RS_PUBLISH_URL;
const SECRET = process.env.RS_JWT_SECRET;
if (!WS_URL || !PUBLISH_URL || !SECRET) {
  throw new Error("run these tests through tests/integration/test_client_js.py (it starts the service)");
}

function mintToken(user, ttlS = 3600) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const signed = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ userId: user, sub: user, iat: now, exp: now + ttlS })}`;
  return `${signed}.${createHmac("sha256", SECRET).update(signed).digest("base64url")}`;
}

test("the TypeScript example compiles and runs against the service", async (t) => {
  const project = mkdtempSync(join(tmpdir(), "rs-example-"));
  t.after(() => rmSync(project, { recursive: true, force: true }));
  mkdirSync(join(project, "node_modules"));
  symlinkSync(PACKAGE_DIR, join(project, "node_modules", "realtime-sync-client"), "dir");
  writeFileSync(join(project, "package.json"), JSON.stringify({ type: "module", private: true }));
  const tsc = join(PACKAGE_DIR, "node_modules", "typescript", "bin", "tsc");
  const outDir = join(project, "out");
  const compiled = spawnSync(
    process.execPath,
    [tsc, "-p", join(PACKAGE_DIR, "types-test"), "--noEmit", "false", "--outDir", outDir, "--pretty", "false"],
    { encoding: "utf8" },
  );
  assert.equal(compiled.status, 0, compiled.stdout + compiled.stderr);

  const { run } = await import(pathToFileURL(join(outDir, "example.js")).href);
  const user = `ts-example-${randomUUID().slice(0, 8)}`;
  const publish = async (taskId) => {
    const id = randomUUID();
    const event = { id, type: "TASK_ADDED", user_id: user, task_id: taskId, data: { title: "typed" } };
    const reply = await fetch(PUBLISH_URL, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(event) });
    assert.equal(reply.status, 204, await reply.text());
    return id;
  };
  const result = await run({ url: WS_URL, token: async () => mintToken(user), WebSocket, publish });

  assert.equal(result.connected.user_id, user);
  assert.equal(result.update.user_id, user);
  assert.equal(result.update.task_id, 42);
  assert.equal(result.action, "task_created");
  assert.deepEqual(result.update.data, { title: "typed" });
  assert.equal(result.iterated.event_id, result.update.event_id);
  assert.deepEqual(result.states.slice(0, 2), ["connecting", "connected"]);
  assert.deepEqual(result.reconnects, []);
  assert.deepEqual(result.serverErrors, []);
  assert.equal(result.stopped, null);
  assert.equal(result.retryInMs, 400); // 0.5 × min(1000, 100 × 2³)
  assert.ok(result.refreshInMs > 0 && result.refreshInMs <= 3600_000, String(result.refreshInMs));
  assert.deepEqual(result.closeCodes, { auth: [4001, 4002], throttle: [4029] });
  assert.equal(result.afterThrottle, 100); // 1 × min(1000, 100 × 2⁰) on the first close
  assert.equal(result.duplicateDropped, true);
});
