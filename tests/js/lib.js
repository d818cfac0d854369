'use strict';
// Shared harness for the scenario scripts run by tests/gateway/test_sdk_js.py.
//
// A scenario is `node scenarios/<name>.js '<json args>'`. Args always carry `url` (the
// WebSocket endpoint) and `mode` ("json" or "protobuf"); scenarios add tokens, channel names,
// `api_url` / `api_key` as they need them.
//
// stdout protocol (one JSON object per line):
//   {"wait": "<name>", ...}   the script asks the Python side to act; it then reads one JSON
//                             line from stdin as the answer (see `ask`).
//   {"result": {...}}         the observations, last line, exit code 0.
//   {"error": "...", "partial": {...}}   failure (exception or overall timeout), exit code != 0.
//
// Nothing here fakes the SDK: `centrifuge` (or its protobuf build) is used as published, with
// the `ws` package as the WebSocket implementation since Node 20 has no global WebSocket.

const readline = require('readline');
const WebSocket = require('ws');

const args = JSON.parse(process.argv[2] || '{}');
const mode = args.mode || 'json';
const protobuf = mode === 'protobuf';
const sdk = protobuf ? require('centrifuge/build/protobuf') : require('centrifuge');
const { Centrifuge } = sdk;

const TIMEOUT_MS = args.timeout_ms || 20000;
const obs = {};
const clients = [];
let done = false;

function write(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// ---- stdin: answers to `ask` ------------------------------------------------------------

const answers = [];
const waiters = [];
let stdinReader = null;

function startStdin() {
  if (stdinReader !== null) {
    return;
  }
  stdinReader = readline.createInterface({ input: process.stdin });
  stdinReader.on('line', (line) => {
    const msg = JSON.parse(line);
    const w = waiters.shift();
    if (w) {
      w(msg);
    } else {
      answers.push(msg);
    }
  });
}

/** Ask the Python side to do something; resolves with its JSON answer. */
function ask(name, data) {
  startStdin();
  write({ wait: name, ...(data || {}) });
  if (answers.length) {
    return Promise.resolve(answers.shift());
  }
  return new Promise((resolve) => waiters.push(resolve));
}

// ---- payloads: JSON values in JSON mode, bytes (of JSON text) in Protobuf mode -----------

/** Application data as the SDK expects it in this mode. */
function enc(value) {
  return protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value;
}

/** Application data received from the SDK, back to a JSON value (undefined stays). */
function dec(value) {
  if (value === undefined || value === null) {
    return value;
  }
  if (protobuf) {
    if (!(value instanceof Uint8Array)) {
      throw new Error('protobuf mode: expected Uint8Array data, got ' + typeof value);
    }
    if (value.length === 0) {
      return undefined;
    }
    return JSON.parse(new TextDecoder().decode(value));
  }
  return value;
}

function info(i) {
  if (!i) {
    return i;
  }
  const out = { client: i.client, user: i.user };
  if (i.connInfo !== undefined) {
    out.connInfo = dec(i.connInfo);
  }
  if (i.chanInfo !== undefined) {
    out.chanInfo = dec(i.chanInfo);
  }
  return out;
}

/** A publication context reduced to plain JSON. */
function pub(ctx) {
  const out = { channel: ctx.channel, data: dec(ctx.data) };
  if (ctx.info) {
    out.info = info(ctx.info);
  }
  if (ctx.offset !== undefined) {
    out.offset = ctx.offset;
  }
  if (ctx.tags && Object.keys(ctx.tags).length) {
    out.tags = ctx.tags;
  }
  return out;
}

/** A subscribed context reduced to plain JSON. */
function subscribed(ctx) {
  const out = {
    channel: ctx.channel,
    recoverable: ctx.recoverable,
    positioned: ctx.positioned,
    wasRecovering: ctx.wasRecovering,
    recovered: ctx.recovered,
    hasRecoveredPublications: ctx.hasRecoveredPublications,
  };
  if (ctx.streamPosition) {
    out.streamPosition = { offset: ctx.streamPosition.offset, epoch: ctx.streamPosition.epoch };
  }
  if (ctx.data !== undefined) {
    out.data = dec(ctx.data);
  }
  return out;
}

function err(e) {
  if (e && typeof e === 'object' && 'code' in e) {
    return { code: e.code, message: e.message };
  }
  return { code: null, message: String(e && e.stack ? e.stack : e) };
}

// ---- clients ----------------------------------------------------------------------------

/** A WebSocket class that records what the SDK sends (to check frame batching). */
function recordingWebSocket(frames) {
  return class RecordingWebSocket extends WebSocket {
    send(data, ...rest) {
      frames.push(typeof data === 'string' ? data : Buffer.from(data));
      return super.send(data, ...rest);
    }
  };
}

/**
 * A Centrifuge client whose life is logged into obs.clients[label]: connecting (with
 * code/reason), connected (client id), disconnected (code/reason), errors, and the events of
 * server-side subscriptions (under `server`).
 */
function newClient(label, options) {
  const opts = { websocket: WebSocket, ...(options || {}) };
  const c = new Centrifuge(args.url, opts);
  const log = { connecting: [], connected: [], disconnected: [], errors: [] };
  obs.clients = obs.clients || {};
  obs.clients[label] = log;
  c.on('connecting', (ctx) => log.connecting.push({ code: ctx.code, reason: ctx.reason }));
  c.on('connected', (ctx) => log.connected.push({ client: ctx.client, transport: ctx.transport }));
  c.on('disconnected', (ctx) => log.disconnected.push({ code: ctx.code, reason: ctx.reason }));
  c.on('error', (ctx) => log.errors.push({ type: ctx.type, code: ctx.error.code, message: ctx.error.message }));
  // Server-side subscriptions (connection token `channels`, server API subscribe).
  const server = { subscribed: [], unsubscribed: [], publications: [] };
  log.server = server;
  c.on('subscribed', (ctx) => server.subscribed.push(subscribed(ctx)));
  c.on('unsubscribed', (ctx) => server.unsubscribed.push({ channel: ctx.channel }));
  c.on('publication', (ctx) => server.publications.push(pub(ctx)));
  clients.push(c);
  return c;
}

/**
 * A subscription whose events are logged into obs.subs[label]: subscribed contexts,
 * subscribing / unsubscribed codes, publications, join / leave, errors.
 */
function newSub(client, label, channel, options) {
  const s = client.newSubscription(channel, options || {});
  const log = {
    subscribing: [], subscribed: [], unsubscribed: [], publications: [], join: [], leave: [], errors: [],
  };
  obs.subs = obs.subs || {};
  obs.subs[label] = log;
  s.on('subscribing', (ctx) => log.subscribing.push({ code: ctx.code, reason: ctx.reason }));
  s.on('subscribed', (ctx) => log.subscribed.push(subscribed(ctx)));
  s.on('unsubscribed', (ctx) => log.unsubscribed.push({ code: ctx.code, reason: ctx.reason }));
  s.on('publication', (ctx) => log.publications.push(pub(ctx)));
  s.on('join', (ctx) => log.join.push(info(ctx.info)));
  s.on('leave', (ctx) => log.leave.push(info(ctx.info)));
  s.on('error', (ctx) => log.errors.push({ type: ctx.type, code: ctx.error.code, message: ctx.error.message }));
  return s;
}

/** Resolve with the first `event` of `emitter` whose context satisfies `pred`. */
function once(emitter, event, pred) {
  return new Promise((resolve) => {
    const handler = (ctx) => {
      if (!pred || pred(ctx)) {
        emitter.off(event, handler);
        resolve(ctx);
      }
    };
    emitter.on(event, handler);
  });
}

/** Resolve once `cond()` holds, checking on every tick of `ms` milliseconds. */
async function until(cond, ms) {
  while (!cond()) {
    await sleep(ms || 10);
  }
}

/** Resolve once `emitter` emitted `event` `n` times in total (counting from now). */
function times(emitter, event, n) {
  return new Promise((resolve) => {
    const seen = [];
    const handler = (ctx) => {
      seen.push(ctx);
      if (seen.length >= n) {
        emitter.off(event, handler);
        resolve(seen);
      }
    };
    emitter.on(event, handler);
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The promise's value, or {error: {code, message}} if it rejects. */
async function settle(promise) {
  try {
    return { ok: await promise };
  } catch (e) {
    return { error: err(e) };
  }
}

// ---- server HTTP API (Node 20 has a global fetch) ----------------------------------------

async function api(method, body) {
  const resp = await fetch(`${args.api_url}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-Key': args.api_key },
    body: JSON.stringify(body),
  });
  if (resp.status !== 200) {
    throw new Error(`API ${method}: HTTP ${resp.status}`);
  }
  const reply = await resp.json();
  if (reply.error) {
    throw new Error(`API ${method}: error ${JSON.stringify(reply.error)}`);
  }
  return reply.result;
}

// ---- running a scenario -----------------------------------------------------------------

function finish(code, payload) {
  if (done) {
    return;
  }
  done = true;
  // Serialised before the clients are closed: their own disconnect is not an observation.
  const text = JSON.stringify(payload) + '\n';
  for (const c of clients) {
    try {
      c.disconnect();
    } catch (e) {
      // Already gone; nothing to release.
    }
  }
  if (stdinReader !== null) {
    stdinReader.close();
  }
  process.stdout.write(text, () => process.exit(code));
}

/** Run `fn` (async, returns the result object) under the overall timeout. */
function main(fn) {
  const timer = setTimeout(() => {
    finish(2, { error: `timeout after ${TIMEOUT_MS} ms`, partial: obs });
  }, TIMEOUT_MS);
  Promise.resolve()
    .then(fn)
    .then((result) => {
      clearTimeout(timer);
      finish(0, { result: { ...obs, ...result } });
    })
    .catch((e) => {
      clearTimeout(timer);
      finish(1, { error: String(e && e.stack ? e.stack : e), partial: obs });
    });
}

module.exports = {
  args, mode, protobuf, sdk, Centrifuge, WebSocket, obs,
  ask, enc, dec, info, pub, subscribed, err, recordingWebSocket, newClient, newSub,
  once, until, times, sleep, settle, api, main,
};
