// The Node peer: a `ws` server doing what the seed's spec does for each task change:
// JSON.stringify of the message for every target connection and a log line per send.
// Events are generated in-process (the peer gets its events for free: no broker call,
// no share lookup), grouped like the team board: connections in arrival order, in
// groups of --group (200). "start" / "stop" on stdin; stops by itself after --max-seconds.
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, v, i, a) => (i % 2 === 0 ? acc.concat([[v.replace(/^--/, ''), a[i + 1]]]) : acc), []),
);
const port = Number(args.port);
const group = Number(args.group || 200);
const maxSeconds = Number(args['max-seconds'] || 300);
const HIGH_WATER = 256 * 1024;

const conns = [];
let nextId = 0;
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, maxPayload: 65536 });
wss.on('connection', (ws) => {
  ws.connId = `c${nextId++}`;
  ws.userId = `u${Math.floor(ws.connId.slice(1) / 2)}`;
  conns.push(ws);
  ws.on('message', () => {});
  ws.on('close', () => {
    const i = conns.indexOf(ws);
    if (i >= 0) conns.splice(i, 1);
  });
});
wss.on('listening', () => process.stderr.write('READY\n'));

let running = false;
let seq = 0;
function makeEvent() {
  seq += 1;
  return {
    type: 'task_update',
    action: 'task_updated',
    event_type: 'TASK_CHANGED',
    event_id: `peer-${String(seq).padStart(7, '0')}-123456`,
    task_id: 'team0-1',
    user_id: 'u1',
    data: {
      assignee: 'u1',
      priority: 2,
      seq,
      sent_us: Date.now() * 1000,
      status: 'in_progress',
      tags: ['bench', 'realtime'],
      title: 'Benchmark task team0-1',
    },
    timestamp: new Date().toISOString(),
    metadata: { traceparent: '00-' + '0'.repeat(32) + '-' + '0'.repeat(16) + '-01' },
  };
}

function sendGroup(targets) {
  const message = makeEvent();
  for (const ws of targets) {
    if (ws.readyState !== WebSocket.OPEN) continue;
    ws.send(JSON.stringify(message));
    console.log(`${new Date().toISOString()} sent ${message.action} ${message.event_id} to ${ws.userId} (${ws.connId})`);
  }
}

let cursor = 0;
function drive() {
  if (!running) return;
  if (conns.length === 0) return setTimeout(drive, 10);
  if (cursor >= conns.length) cursor = 0;
  const targets = conns.slice(cursor, cursor + group);
  cursor += group;
  sendGroup(targets);
  if (targets[0].bufferedAmount > HIGH_WATER) return setTimeout(drive, 1);
  setImmediate(drive);
}

process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  for (const line of chunk.split('\n')) {
    if (line.trim() === 'start' && !running) { running = true; setImmediate(drive); }
    if (line.trim() === 'stop') running = false;
  }
});
process.stdin.on('end', () => process.exit(0));
setTimeout(() => process.exit(0), maxSeconds * 1000);
