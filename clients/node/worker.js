#!/usr/bin/env node
// Longshore external worker, in JavaScript.
//
// Claims tasks of an `external` profile through the gateway's WorkerService
// (long poll), acquires the task's sandbox through SandboxService, runs the
// task's command with SandboxService.Exec while streaming its output back with
// WorkerService.AppendOutput, heartbeats the run's lease, and ends the run
// with CompleteTask (exit 0) or FailTask. The protos are read from `protos/`
// at run time: no generated code.
//
// ClaimTask returns the run's sandbox spec (env values included: the holder
// of a live run is trusted with them; every other read shows `<redacted>`)
// and a sandbox token proving the worker holds the run. The worker acquires
// with that spec unchanged and sends the token as `longshore-sandbox-token`
// metadata on AcquireSandbox, Exec and ReleaseSandbox; Heartbeat renews it.
//
// Usage:
//   LONGSHORE_GATEWAY_ADDR=127.0.0.1:50051 LONGSHORE_API_KEY=lsk_... \
//     node worker.js --profile NAME [--worker-id ID] [--max-tasks N] [--wait SECONDS]
// The API key needs the `worker` scope (or `admin`).
'use strict';

const os = require('os');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = process.env.LONGSHORE_PROTOS || path.resolve(__dirname, '..', '..', 'protos');
const SANDBOX_TOKEN_KEY = 'longshore-sandbox-token';

function parseArgs(argv) {
  const args = {
    profile: '',
    workerId: `node-${os.hostname()}-${process.pid}`,
    maxTasks: 0,
    wait: 20,
    board: '',
  };
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    const value = () => {
      i += 1;
      if (i >= argv.length) throw new Error(`${flag}: missing value`);
      return argv[i];
    };
    if (flag === '--profile') args.profile = value();
    else if (flag === '--worker-id') args.workerId = value();
    else if (flag === '--max-tasks') args.maxTasks = Number(value());
    else if (flag === '--wait') args.wait = Number(value());
    else if (flag === '--board') args.board = value();
    else throw new Error(`unknown option ${flag}`);
  }
  if (!args.profile) throw new Error('--profile is required');
  return args;
}

function loadServices() {
  const definition = protoLoader.loadSync(
    ['longshore/kanban/v1/worker_service.proto', 'longshore/sandbox/v1/sandbox_service.proto'],
    { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTOS] },
  );
  const loaded = grpc.loadPackageDefinition(definition);
  return {
    WorkerService: loaded.longshore.kanban.v1.WorkerService,
    SandboxService: loaded.longshore.sandbox.v1.SandboxService,
  };
}

function log(message, fields = {}) {
  process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), msg: message, ...fields })}\n`);
}

function deadline(seconds) {
  return new Date(Date.now() + seconds * 1000);
}

// Promisified unary call with the API key and a deadline.
function unary(client, method, request, auth, seconds = 30) {
  return new Promise((resolve, reject) => {
    client[method](request, auth, { deadline: deadline(seconds) }, (err, reply) => {
      if (err) reject(err);
      else resolve(reply);
    });
  });
}

function durationSeconds(duration) {
  if (!duration) return 0;
  return Number(duration.seconds || 0) + Number(duration.nanos || 0) / 1e9;
}

class Worker {
  constructor(args, addr, apiKey) {
    const { WorkerService, SandboxService } = loadServices();
    const credentials = grpc.credentials.createInsecure();
    this.args = args;
    this.worker = new WorkerService(addr, credentials);
    this.sandbox = new SandboxService(addr, credentials);
    this.auth = new grpc.Metadata();
    this.auth.set('authorization', `Bearer ${apiKey}`);
    this.stopping = false;
    this.current = null;
  }

  stop() {
    this.stopping = true;
    if (this.current) this.current.cancel();
  }

  // The API key plus the run's current sandbox token, for SandboxService calls.
  sandboxAuth(run) {
    const md = this.auth.clone();
    if (run.token) md.set(SANDBOX_TOKEN_KEY, run.token);
    return md;
  }

  async run() {
    let done = 0;
    while (!this.stopping && (this.args.maxTasks <= 0 || done < this.args.maxTasks)) {
      const claim = await unary(
        this.worker,
        'ClaimTask',
        {
          profile: this.args.profile,
          worker_id: this.args.workerId,
          wait: { seconds: this.args.wait, nanos: 0 },
          board_id: this.args.board,
        },
        this.auth,
        this.args.wait + 15,
      );
      if (!claim.task || !claim.run_id) continue;
      await this.runTask(claim);
      done += 1;
    }
    return done;
  }

  async runTask(claim) {
    const { task, run_id: runId, profile } = claim;
    log('claimed', { task_id: task.task_id, run_id: runId });
    const lease = Math.max(1, (new Date(Number(claim.lease_expire_time.seconds) * 1000) - Date.now()) / 1000);
    // The token is renewed with the lease; calls read the newest one.
    const run = { token: claim.sandbox_token || '' };
    let refused = null;
    const beat = setInterval(() => {
      unary(this.worker, 'Heartbeat', { run_id: runId }, this.auth, 10).then((reply) => {
        if (reply.sandbox_token) run.token = reply.sandbox_token;
      }).catch((err) => {
        if (
          err.code === grpc.status.FAILED_PRECONDITION
          || err.code === grpc.status.NOT_FOUND
          || err.code === grpc.status.PERMISSION_DENIED
        ) {
          refused = err; // the task left running: stop working on it
          if (this.current) this.current.cancel();
        }
        log('heartbeat failed', { run_id: runId, error: err.details || String(err) });
      });
    }, Math.max(500, (lease * 1000) / 3));
    let sandboxId = '';
    try {
      // Passed unchanged: the token admits exactly this spec (its digest).
      const spec = claim.sandbox_spec;
      const acquired = await unary(
        this.sandbox,
        'AcquireSandbox',
        { task_id: task.task_id, profile: task.assignee || this.args.profile, spec },
        this.sandboxAuth(run),
        120,
      );
      sandboxId = acquired.sandbox.sandbox_id;
      if (!task.command || task.command.length === 0) {
        await unary(this.worker, 'FailTask', { run_id: runId, error: 'task has no command', retryable: false }, this.auth);
        return;
      }
      const exit = await this.exec(runId, sandboxId, task, spec.env || {}, this.sandboxAuth(run));
      if (refused) return;
      if (exit.exit_code === 0 && !exit.timed_out) {
        await unary(this.worker, 'CompleteTask', { run_id: runId, summary: `exit 0 in ${durationSeconds(exit.duration).toFixed(3)}s` }, this.auth);
        log('completed', { task_id: task.task_id, run_id: runId });
      } else {
        const error = exit.timed_out ? 'timed out' : `exit code ${exit.exit_code}`;
        await unary(this.worker, 'FailTask', { run_id: runId, error, retryable: false, exit_code: exit.exit_code }, this.auth);
        log('failed', { task_id: task.task_id, run_id: runId, error });
      }
    } catch (err) {
      log('run failed', { task_id: task.task_id, run_id: runId, error: err.details || String(err) });
      if (!refused) {
        await unary(this.worker, 'FailTask', { run_id: runId, error: err.details || String(err), retryable: true }, this.auth)
          .catch((e) => log('FailTask failed', { error: e.details || String(e) }));
      }
    } finally {
      clearInterval(beat);
      if (sandboxId) {
        const keep = profile && profile.keep_sandbox;
        await unary(this.sandbox, 'ReleaseSandbox', { sandbox_id: sandboxId, force_remove: !keep }, this.sandboxAuth(run))
          .catch((e) => log('release failed', { error: e.details || String(e) }));
      }
    }
  }

  // Runs the command; appends output to the run in order; resolves with the exit status.
  // `env` is the run spec's (real values; the task's own env reads as `<redacted>`).
  exec(runId, sandboxId, task, env, auth) {
    return new Promise((resolve, reject) => {
      const request = { sandbox_id: sandboxId, argv: task.command, env };
      if (durationSeconds(task.max_runtime) > 0) request.timeout = task.max_runtime;
      const runtime = durationSeconds(task.max_runtime) || 3600;
      const call = this.sandbox.Exec(request, auth, { deadline: deadline(runtime + 60) });
      this.current = call;
      let appends = Promise.resolve();
      let exit = null;
      call.on('data', (message) => {
        if (message.output && message.output.data && message.output.data.length) {
          const data = Buffer.from(message.output.data);
          appends = appends.then(() => unary(this.worker, 'AppendOutput', { run_id: runId, data }, this.auth));
        } else if (message.exit) {
          exit = message.exit;
        }
      });
      call.on('error', (err) => {
        this.current = null;
        reject(err);
      });
      call.on('end', () => {
        this.current = null;
        appends.then(() => (exit ? resolve(exit) : reject(new Error('exec ended without an exit status'))), reject);
      });
    });
  }
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`error: ${err.message}\n`);
    return 2;
  }
  const addr = process.env.LONGSHORE_GATEWAY_ADDR || '127.0.0.1:50051';
  const key = process.env.LONGSHORE_API_KEY || '';
  if (!key) {
    process.stderr.write('error: set LONGSHORE_API_KEY (a key with the worker scope)\n');
    return 2;
  }
  const worker = new Worker(args, addr, key);
  process.on('SIGINT', () => worker.stop());
  process.on('SIGTERM', () => worker.stop());
  try {
    const done = await worker.run();
    log('worker done', { tasks: done });
    return 0;
  } catch (err) {
    process.stderr.write(`error: ${grpc.status[err.code] || ''} ${err.details || err.message}\n`);
    return 1;
  }
}

if (require.main === module) {
  main().then((code) => process.exit(code));
}

module.exports = { Worker, loadServices, parseArgs };
