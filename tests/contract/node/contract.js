#!/usr/bin/env node
// A Node client of the raft-sidecar worker API, written from proto/ and
// docs/worker-api.md alone: no project code, only @grpc/grpc-js and
// @grpc/proto-loader (package-lock.json pins them).
//
//   node contract.js --address 127.0.0.1:7401 --election NAME [--ttl-ms 4000]
//
// Against a running sidecar it plays one scenario of two candidates and
// prints what it observed as one JSON object on stdout; the assertions are
// in tests/contract/test_node_client.py. Exit status 0 when the scenario ran
// to its end, 1 (with {"failed": "..."} on stdout) when a step failed.
//
// As the docs ask of every client, UNAVAILABLE (and nothing else) is retried
// with backoff: calls with the same request (Campaign and Resign with the
// same key are idempotent), KeepAlive by sending again on the same stream.
// The report counts the retries.
//
// Scenario:
//   1. Status of the sidecar.
//   2. Candidate A campaigns with a key it made itself: granted at once.
//   3. KeepAlive stream 1 for A: two acknowledgements, each turned into a
//      safe deadline = send_time(sequence) + ttl_ms - safety_margin_ms.
//   4. Candidate B campaigns: queued, and reports its position.
//   5. Stream 1 is half-closed (a deliberate end); stream 2 presents the
//      same key: the token stays valid (ValidateToken), also past the
//      re-attach window, so the reopen cancelled the revoke. A wrong key on
//      stream 2 is refused for that request only (LeaseError).
//   6. Resign with a wrong key: PERMISSION_DENIED, its google.rpc.ErrorInfo
//      read from the grpc-status-details-bin trailer.
//   7. Resign A, then Resign A again (the retry): RESIGNED, then OK
//      ALREADY_RESIGNED with the same ended_at_index. B is granted.
//   8. B resigns.
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const { performance } = require('node:perf_hooks');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.resolve(__dirname, '..', '..', '..', 'proto');
const VENDORED_DIR = path.join(__dirname, 'protos'); // google/rpc/{status,error_details}.proto
const ERROR_INFO_TYPE_URL = 'type.googleapis.com/google.rpc.ErrorInfo';
const CALL_TIMEOUT_MS = 15000;
const RETRY_FOR_MS = 30000;

// uint64 (tokens, indices, sequences) as decimal strings; uint32 durations
// stay JS numbers. keepCase: the field names of the .proto file.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR, VENDORED_DIR],
};

const definitions = protoLoader.loadSync(
  ['raftsidecar/worker/v1/worker.proto', 'google/rpc/status.proto', 'google/rpc/error_details.proto'],
  LOADER_OPTIONS,
);
const worker = grpc.loadPackageDefinition(definitions).raftsidecar.worker.v1;
const RpcStatus = definitions['google.rpc.Status'];
const ErrorInfo = definitions['google.rpc.ErrorInfo'];
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

const now = () => performance.now(); // monotonic, in ms

function newLeaseKey() {
  return crypto.randomBytes(32).toString('base64url'); // 43 characters of [A-Za-z0-9_-]
}

function deadlineIn(ms) {
  return new Date(Date.now() + ms);
}

/** The documented margin (docs/worker-api.md): max(ttl/10, 100 ms), at most ttl/2. */
function documentedMarginMs(ttlMs) {
  return Math.min(Math.max(Math.floor(ttlMs / 10), 100), Math.floor(ttlMs / 2));
}

/** code, reason, domain, metadata of a failed call, the ErrorInfo read from the trailer. */
function describeError(error) {
  const out = { code: error.code, code_name: CODE_NAMES[error.code], details: error.details };
  const raw = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
  if (raw.length === 0) return { ...out, error_info: null };
  const status = RpcStatus.deserialize(raw[0]);
  out.status_code = status.code; // must equal the call's code
  const any = status.details.find((d) => d.type_url === ERROR_INFO_TYPE_URL);
  out.error_info = any ? ErrorInfo.deserialize(any.value) : null;
  return out;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const retries = {}; // what -> how many UNAVAILABLE answers were retried

/** attempt() again, with backoff, while it fails UNAVAILABLE (the documented retry). */
async function retrying(what, attempt) {
  const until = Date.now() + RETRY_FOR_MS;
  let backoffMs = 50;
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      if (error.code !== grpc.status.UNAVAILABLE || Date.now() > until) throw error;
      retries[what] = (retries[what] || 0) + 1;
      await sleep(backoffMs);
      backoffMs = Math.min(2 * backoffMs, 1000);
    }
  }
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadlineIn(CALL_TIMEOUT_MS) }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** The answer of a unary call, retried while UNAVAILABLE. */
function call(client, method, request) {
  return retrying(method, () => unary(client, method, request));
}

/** A unary call expected to fail: resolves with describeError(error). */
async function refused(client, method, request) {
  try {
    const response = await call(client, method, request);
    throw new Error(`${method} succeeded where a refusal was expected: ${JSON.stringify(response)}`);
  } catch (error) {
    if (error.code === undefined) throw error;
    return describeError(error);
  }
}

/**
 * Campaign until granted: resolves with {token, lease_key, positions,
 * sent_at_ms} and calls onQueued(position, lease_key) for each queued event.
 * A call stays open until the grant (one that ends before is withdrawn); one
 * that fails UNAVAILABLE is made again with the same request (same key).
 */
function campaign(client, request, onQueued = () => {}) {
  const positions = [];
  const sentAt = now(); // the first attempt's send: the grant came after it
  const once = () =>
    new Promise((resolve, reject) => {
      const stream = client.Campaign(request, { deadline: deadlineIn(60000) });
      let result = null;
      stream.on('data', (response) => {
        if (response.event === 'queued') {
          positions.push(response.queued.position);
          onQueued(response.queued.position, response.queued.lease_key);
        } else if (response.event === 'granted') {
          result = { ...response.granted, positions, sent_at_ms: sentAt };
        }
      });
      stream.on('error', reject);
      stream.on('end', () =>
        result ? resolve(result) : reject(new Error('the Campaign stream ended without a grant')),
      );
    });
  return retrying('Campaign', once);
}

/** A KeepAlive stream: send() resolves with the response echoing its sequence. */
class KeepAliveStream {
  constructor(client) {
    this.call = client.KeepAlive();
    this.sequence = 0;
    this.pending = new Map(); // String(sequence) -> {resolve, reject, sentAt}
    this.failure = null;
    this.ended = new Promise((resolve) => this.call.on('status', resolve));
    this.call.on('data', (response) => {
      const entry = this.pending.get(response.sequence); // uint64: a string
      if (!entry) return;
      this.pending.delete(response.sequence);
      entry.resolve({ response, sentAt: entry.sentAt, receivedAt: now() });
    });
    this.call.on('error', (error) => {
      this.failure = error;
      for (const entry of this.pending.values()) entry.reject(error);
      this.pending.clear();
    });
  }

  send(election, token, leaseKey, { release = false } = {}) {
    if (this.failure) return Promise.reject(this.failure);
    this.sequence += 1;
    const sequence = this.sequence;
    return new Promise((resolve, reject) => {
      // The send time is taken before the request is written (the rule).
      const sentAt = now();
      this.pending.set(String(sequence), { resolve, reject, sentAt });
      this.call.write({ election, fencing_token: token, lease_key: leaseKey, sequence, release });
    });
  }

  /**
   * Renew until answered with anything but UNAVAILABLE (no Raft leader
   * reachable: not renewed this time, keep sending).
   */
  async renew(election, token, leaseKey) {
    const until = Date.now() + RETRY_FOR_MS;
    for (;;) {
      const answer = await this.send(election, token, leaseKey);
      const error = answer.response.error;
      if (!error || error.code !== grpc.status.UNAVAILABLE || Date.now() > until) return answer;
      retries.KeepAlive = (retries.KeepAlive || 0) + 1;
      await sleep(100);
    }
  }

  /** Half-close (a deliberate end) and wait for the server's status. */
  async close() {
    this.call.end();
    const status = await this.ended;
    return { code: status.code, code_name: CODE_NAMES[status.code] };
  }
}

/** One acknowledgement as the report shows it, with the safe deadline computed. */
function acknowledgement(stream, { response, sentAt, receivedAt }) {
  const ack = {
    stream,
    sequence: response.sequence,
    send_ms: sentAt,
    receipt_ms: receivedAt,
    ttl_ms: response.ttl_ms,
    safety_margin_ms: response.safety_margin_ms,
    error: response.error,
    types: {
      ttl_ms: typeof response.ttl_ms,
      safety_margin_ms: typeof response.safety_margin_ms,
      sequence: typeof response.sequence,
      fencing_token: typeof response.fencing_token,
    },
  };
  if (!response.error && response.ttl_ms > 0) {
    // docs/worker-api.md: deadline = send_time(sequence) + ttl_ms - safety_margin_ms
    ack.deadline_ms = sentAt + response.ttl_ms - response.safety_margin_ms;
    ack.remaining_at_receipt_ms = ack.deadline_ms - receivedAt;
  }
  return ack;
}

async function run({ address, election, ttlMs }) {
  const report = { address, election, ttl_ms: ttlMs, documented_margin_ms: documentedMarginMs(ttlMs) };
  const client = new worker.ElectionService(address, grpc.credentials.createInsecure());
  const keyA = newLeaseKey();
  const keyB = newLeaseKey();
  try {
    const status = await call(client, 'Status', {});
    report.status = { node_id: status.node_id, role: status.role, leader_id: status.leader_id };

    // 2. A is granted at once: nobody holds the election.
    const a = await campaign(client, {
      election, candidate_id: 'node-a', ttl_ms: ttlMs, lease_key: keyA,
    });
    report.a = {
      token: a.token.fencing_token,
      token_ttl_ms: a.token.ttl_ms,
      token_types: { fencing_token: typeof a.token.fencing_token, ttl_ms: typeof a.token.ttl_ms },
      lease_key_echoed: a.lease_key === keyA,
      positions: a.positions,
      // Before the first acknowledgement: first Campaign send + ttl - margin.
      initial_deadline_ms: a.sent_at_ms + ttlMs - documentedMarginMs(ttlMs),
    };
    const tokenA = a.token.fencing_token;

    // 3. KeepAlive stream 1: acknowledgements and safe deadlines.
    const acks = [];
    const first = new KeepAliveStream(client);
    acks.push(acknowledgement(1, await first.renew(election, tokenA, keyA)));

    // 4. B campaigns while A holds: queued, with its position.
    let resolveQueued;
    const queuedOnce = new Promise((resolve) => (resolveQueued = resolve));
    const bGranted = campaign(client, { election, candidate_id: 'node-b', ttl_ms: ttlMs, lease_key: keyB },
      (position, leaseKey) => resolveQueued({ position, lease_key_echoed: leaseKey === keyB }));
    bGranted.catch(() => {}); // awaited below; never an unhandled rejection meanwhile
    report.b_queued = await Promise.race([queuedOnce, bGranted.then(() => ({ position: 0 }))]);

    acks.push(acknowledgement(1, await first.renew(election, tokenA, keyA)));

    // 5. Reopen: half-close stream 1, present the same key on stream 2.
    const reopen = {};
    reopen.first_stream_status = await first.close();
    const endedAt = now();
    const second = new KeepAliveStream(client);
    acks.push(acknowledgement(2, await second.renew(election, tokenA, keyA)));
    reopen.valid_after_reopen = (await call(client, 'ValidateToken', { election, fencing_token: tokenA })).valid;
    // A wrong key on the same stream: refused for that request only.
    const wrong = acknowledgement(2, await second.renew(election, tokenA, newLeaseKey()));
    reopen.wrong_key_error = wrong.error;
    reopen.wrong_key_sequence = wrong.sequence;
    acks.push(acknowledgement(2, await second.renew(election, tokenA, keyA)));
    // Keep renewing, every ttl/4 as a client would, until twice the re-attach
    // window (ttl/4 after the deliberate end) has passed: had the reopen not
    // taken the lease over, the sidecar would have revoked it by then.
    reopen.window_ms = ttlMs / 4;
    while (now() < endedAt + 2 * reopen.window_ms) {
      await sleep(ttlMs / 4);
      acks.push(acknowledgement(2, await second.renew(election, tokenA, keyA)));
    }
    reopen.waited_ms = now() - endedAt;
    reopen.valid_after_window = (await call(client, 'ValidateToken', { election, fencing_token: tokenA })).valid;
    report.reopen = reopen;
    report.acks = acks;

    // 6. A refusal with its ErrorInfo: Resign of A's grant under a wrong key.
    report.refusal = {
      rpc: 'Resign',
      ...(await refused(client, 'Resign', { election, lease_key: newLeaseKey(), fencing_token: tokenA })),
    };

    // 7. Resign, then the retry of the same Resign.
    // (Should the first call be retried after an UNAVAILABLE whose attempt
    // was applied, it answers ALREADY_RESIGNED itself: the report says so.)
    const before = retries.Resign || 0;
    const resigned = await call(client, 'Resign', { election, lease_key: keyA, fencing_token: tokenA });
    const firstRetried = (retries.Resign || 0) > before;
    const retried = await call(client, 'Resign', { election, lease_key: keyA, fencing_token: tokenA });
    report.resign = { first: resigned, first_retried: firstRetried, retry: retried };
    const afterResign = acknowledgement(2, await second.renew(election, tokenA, keyA));
    report.keepalive_after_resign = afterResign.error;
    report.second_stream_status = await second.close();

    const grantedB = await bGranted;
    report.b = {
      token: grantedB.token.fencing_token,
      candidate_id: grantedB.token.candidate_id,
      lease_key_echoed: grantedB.lease_key === keyB,
      positions: grantedB.positions,
    };
    // 8. B leaves by key alone (no token).
    report.b_resign = await call(client, 'Resign', { election, lease_key: keyB });
    report.retries = retries;
    return report;
  } finally {
    client.close();
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      address: { type: 'string' },
      election: { type: 'string' },
      'ttl-ms': { type: 'string', default: '4000' },
    },
  });
  if (!values.address || !values.election) {
    process.stderr.write('usage: node contract.js --address HOST:PORT --election NAME [--ttl-ms N]\n');
    process.exit(2);
  }
  try {
    const report = await run({
      address: values.address,
      election: values.election,
      ttlMs: Number.parseInt(values['ttl-ms'], 10),
    });
    process.stdout.write(`${JSON.stringify(report)}\n`);
  } catch (error) {
    const failure = { failed: String(error && error.stack ? error.stack : error) };
    if (error && error.code !== undefined) failure.error = describeError(error);
    process.stdout.write(`${JSON.stringify(failure)}\n`);
    process.exitCode = 1;
  }
}

main();
