// The live task board: cards per status, moved by task_update frames from the browser client.
import { RealtimeSyncClient } from "/client/realtime-sync.js";

const COLUMNS = ["todo", "in_progress", "review", "done"];
const STATUS_NAMES = { todo: "To do", in_progress: "In progress", review: "Review", done: "Done" };
const VERBS = {
  task_created: "created",
  task_updated: "edited",
  task_status_changed: "moved",
  task_deleted: "removed",
  task_restored: "restored",
};
const STATE_LABELS = {
  connecting: "Connecting…",
  connected: "Live",
  reconnecting: "Reconnecting…",
  resyncing: "Resyncing…",
  closed: "Disconnected",
};
const STORE_KEY = "realtime-sync-board";

const $ = (selector, root = document) => root.querySelector(selector);

function readToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const fromHash = params.get("token");
  if (fromHash) {
    sessionStorage.setItem(`${STORE_KEY}:token`, fromHash);
    history.replaceState(null, "", location.pathname + location.search); // keep it off the screen
    return fromHash;
  }
  return sessionStorage.getItem(`${STORE_KEY}:token`);
}

function initials(name) {
  return String(name || "?")
    .split(/[\s._-]+/)
    .filter(Boolean)
    .slice(0, 2)
    .map((part) => part[0].toUpperCase())
    .join("");
}

function hue(name) {
  let h = 0;
  for (const ch of String(name)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function avatar(name) {
  const el = document.createElement("span");
  el.className = "avatar";
  el.textContent = initials(name);
  el.title = name;
  el.style.setProperty("--hue", hue(name));
  return el;
}

function timeAgo(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 5) return "just now";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

class Board {
  constructor(root) {
    this.root = root;
    this.tasks = new Map(); // task key -> {task, owner, sharedWith, updatedAt}
    this.removed = new Map(); // removed tasks, kept so a restore can bring them back
    this.me = null;
    this.updates = 0;
    this.lastEventId = null;
  }

  column(status) {
    const known = COLUMNS.includes(status) ? status : "other";
    let col = this.root.querySelector(`.column[data-status="${known}"]`);
    if (!col) {
      col = document.createElement("section");
      col.className = "column";
      col.dataset.status = known;
      col.innerHTML = '<header><h2>Other</h2><span class="count">0</span></header><div class="cards"></div>';
      this.root.append(col);
    }
    return col;
  }

  apply(frame) {
    this.updates += 1;
    this.lastEventId = frame.event_id;
    const key = String(frame.task_id);
    const previous = this.tasks.get(key) ?? this.removed.get(key);
    const data = frame.data && typeof frame.data === "object" ? frame.data : {};
    const entry = {
      task: { ...(previous?.task ?? {}), ...data },
      owner: frame.user_id,
      sharedWith: frame.metadata?.shared_with ?? previous?.sharedWith ?? [],
      updatedAt: frame.timestamp ?? new Date().toISOString(),
    };
    let what = VERBS[frame.action] ?? "changed";
    if (frame.action === "task_deleted") {
      this.tasks.delete(key);
      this.removed.set(key, entry);
      this.removeCard(key);
    } else if (frame.action === "task_unknown_event") {
      what = `sent ${frame.event_type} for`;
    } else {
      this.removed.delete(key);
      const moved = previous && previous.task.status !== entry.task.status;
      this.tasks.set(key, entry);
      this.renderCard(key, entry, frame.action);
      if (frame.action === "task_status_changed" || moved) {
        what = `moved to ${STATUS_NAMES[entry.task.status] ?? entry.task.status}`;
      }
    }
    this.log(frame, entry, what);
    this.counts();
  }

  /** A task no longer shared with this user: drop its card and every copy of it (the
   * sessionStorage snapshot too, on the next save), so a reload does not bring it back. */
  revoke(frame) {
    this.lastEventId = frame.event_id;
    const key = String(frame.task_id);
    const entry = this.tasks.get(key) ?? this.removed.get(key);
    if (entry && entry.owner === this.me) return; // the user's own task of the same id
    this.tasks.delete(key);
    this.removed.delete(key);
    this.removeCard(key);
    const title = entry?.task?.title ?? `Task ${frame.task_id}`;
    this.note(`${title} is no longer shared with you`);
    this.counts();
  }

  renderCard(key, entry, action) {
    const { task, owner, sharedWith, updatedAt } = entry;
    let card = this.root.querySelector(`.card[data-task-id="${CSS.escape(key)}"]`);
    const fresh = !card;
    if (fresh) {
      card = document.createElement("article");
      card.className = "card";
      card.dataset.taskId = key;
    }
    card.dataset.priority = task.priority ?? "none";
    card.dataset.status = task.status ?? "todo";
    card.replaceChildren();

    const top = document.createElement("div");
    top.className = "card-top";
    const id = document.createElement("span");
    id.className = "task-id";
    id.textContent = `#${key}`;
    top.append(id);
    if (task.priority) {
      const prio = document.createElement("span");
      prio.className = `priority priority-${task.priority}`;
      prio.textContent = task.priority;
      top.append(prio);
    }
    const title = document.createElement("h3");
    title.className = "title";
    title.textContent = task.title ?? `Task ${key}`;
    card.append(top, title);

    if (task.description) {
      const desc = document.createElement("p");
      desc.className = "description";
      desc.textContent = task.description;
      card.append(desc);
    }
    if (Array.isArray(task.labels) && task.labels.length) {
      const labels = document.createElement("div");
      labels.className = "labels";
      for (const label of task.labels) {
        const chip = document.createElement("span");
        chip.className = "label";
        chip.textContent = label;
        labels.append(chip);
      }
      card.append(labels);
    }

    const foot = document.createElement("footer");
    const people = document.createElement("div");
    people.className = "people";
    people.append(avatar(task.assignee ?? owner));
    const sharing = document.createElement("span");
    sharing.className = "sharing";
    if (this.me && owner !== this.me) sharing.textContent = `shared by ${owner}`;
    else if (sharedWith.length) sharing.textContent = `shared with ${sharedWith.join(", ")}`;
    people.append(sharing);
    const when = document.createElement("time");
    when.dateTime = updatedAt;
    when.textContent = timeAgo(updatedAt);
    foot.append(people, when);
    card.append(foot);

    const cards = $(".cards", this.column(task.status ?? "todo"));
    if (card.parentElement !== cards) {
      cards.prepend(card);
      card.classList.remove("enter", "flash");
      void card.offsetWidth; // restart the animation
      card.classList.add("enter");
    } else if (!fresh) {
      card.classList.remove("flash");
      void card.offsetWidth;
      card.classList.add("flash");
    }
    if (action === "task_restored") card.classList.add("restored");
  }

  removeCard(key) {
    const card = this.root.querySelector(`.card[data-task-id="${CSS.escape(key)}"]`);
    if (!card) return;
    card.dataset.taskId = `${key}:leaving`;
    card.classList.add("leave");
    setTimeout(() => card.remove(), 350);
  }

  counts() {
    for (const col of this.root.querySelectorAll(".column")) {
      $(".count", col).textContent = String(col.querySelectorAll(".card:not(.leave)").length);
    }
    $("#update-count").textContent = String(this.updates);
  }

  log(frame, entry, what) {
    const list = $("#activity");
    $(".empty", list)?.remove();
    const item = document.createElement("li");
    item.className = `activity-${frame.action}`;
    item.append(avatar(entry.task.assignee ?? frame.user_id));
    const text = document.createElement("span");
    const title = document.createElement("b");
    title.textContent = entry.task.title ?? `Task ${frame.task_id}`;
    text.append(`${frame.user_id}'s `, title, ` ${what}`);
    const when = document.createElement("time");
    when.dateTime = entry.updatedAt;
    when.textContent = timeAgo(entry.updatedAt);
    item.append(text, when);
    list.prepend(item);
    while (list.children.length > 12) list.lastElementChild.remove();
  }

  note(text) {
    const list = $("#activity");
    $(".empty", list)?.remove();
    const item = document.createElement("li");
    item.className = "note";
    item.textContent = text;
    list.prepend(item);
  }

  save() {
    const snapshot = { me: this.me, lastEventId: this.lastEventId, tasks: [...this.tasks], removed: [...this.removed] };
    sessionStorage.setItem(`${STORE_KEY}:state`, JSON.stringify(snapshot));
  }

  restore(user) {
    try {
      const saved = JSON.parse(sessionStorage.getItem(`${STORE_KEY}:state`) ?? "null");
      if (!saved || saved.me !== user) return null;
      this.me = user;
      this.removed = new Map(saved.removed);
      for (const [key, entry] of saved.tasks) {
        this.tasks.set(key, entry);
        this.renderCard(key, entry, "task_updated");
      }
      this.counts();
      return saved.lastEventId;
    } catch {
      return null;
    }
  }
}

function userOf(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return claims.userId ?? claims.sub ?? null;
  } catch {
    return null;
  }
}

function showState(state, detail) {
  const el = $("#connection");
  el.dataset.state = state;
  let label = STATE_LABELS[state] ?? state;
  if (state === "reconnecting" && detail?.delayMs !== undefined) {
    label = `Reconnecting in ${(detail.delayMs / 1000).toFixed(1)} s…`;
  }
  $(".state-label", el).textContent = label;
  document.title = `${state === "connected" ? "●" : "○"} Live task board`;
}

function main() {
  const token = readToken();
  if (!token) {
    $("#signin").hidden = false;
    showState("closed");
    $("#signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("#signin-token").value.trim();
      if (value) {
        location.hash = `token=${encodeURIComponent(value)}`;
        location.reload();
      }
    });
    return;
  }
  const board = new Board($("#board"));
  const user = userOf(token);
  const since = user ? board.restore(user) : null;
  board.me = user;
  if (user) {
    const chip = $("#user");
    chip.hidden = false;
    chip.replaceChildren(avatar(user), document.createTextNode(user));
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const client = new RealtimeSyncClient({
    url: `${scheme}://${location.host}/ws`,
    token: () => readToken() ?? token,
    since: since ?? undefined,
    backoffBaseMs: 500,
    backoffCapMs: 10000,
    pingIntervalMs: 15000,
    pingTimeoutMs: 8000,
  });
  client.addEventListener("state", (e) => showState(e.detail));
  client.addEventListener("reconnect", (e) => showState("reconnecting", e.detail));
  client.addEventListener("connected", (e) => {
    board.me = e.detail.user_id;
    if (client.connections > 1) board.note("Reconnected — catching up");
  });
  client.addEventListener("update", (e) => {
    board.apply(e.detail);
    board.save();
  });
  client.addEventListener("accessRevoked", (e) => {
    board.revoke(e.detail);
    board.save();
  });
  client.addEventListener("resync", () => board.note("Some changes could not be replayed; showing what arrives from now on"));
  client.addEventListener("error", (e) => {
    showState("closed");
    board.note(`Stopped: ${e.detail.message}. Open the board with a fresh token.`);
    sessionStorage.removeItem(`${STORE_KEY}:token`);
  });
  setInterval(() => {
    for (const el of document.querySelectorAll("time[datetime]")) el.textContent = timeAgo(el.dateTime);
  }, 5000);
  window.realtimeSync = { client, board }; // for the console (and the end-to-end test)
  client.start();
}

main();
