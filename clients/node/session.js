#!/usr/bin/env node
// Files and a shell session in a sandbox, in JavaScript, through the gateway.
//
// Writes a script into the sandbox (WriteFiles), opens a session
// (OpenSession), moves into the script's directory and exports a variable in
// one command, runs the script in the next (RunSessionCommand: the directory
// and the variable carried over; output streams as it comes), reads back the
// file the script wrote (ReadFile) and closes the session (CloseSession).
// The protos are read from `protos/` at run time: no generated code.
//
// Usage:
//   LONGSHORE_GATEWAY_ADDR=127.0.0.1:50051 LONGSHORE_API_KEY=lsk_... node session.js SANDBOX
// The key needs the `write` scope (or `admin`); a worker key also sends the
// run's sandbox token as `LONGSHORE_SANDBOX_TOKEN`.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = process.env.LONGSHORE_PROTOS || path.resolve(__dirname, '..', '..', 'protos');

function sandboxService(addr) {
  const definition = protoLoader.loadSync(['longshore/sandbox/v1/sandbox_service.proto'], {
    keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTOS],
  });
  const { SandboxService } = grpc.loadPackageDefinition(definition).longshore.sandbox.v1;
  return new SandboxService(addr, grpc.credentials.createInsecure());
}

function call(client, method, request, auth) {
  return new Promise((resolve, reject) => {
    client[method](request, auth, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

function writeFile(client, auth, sandboxId, filePath, data, mode) {
  return new Promise((resolve, reject) => {
    const stream = client.WriteFiles(auth, (err, reply) => (err ? reject(err) : resolve(reply)));
    stream.write({ sandbox_id: sandboxId }); // first: the sandbox
    stream.write({ header: { path: filePath, size: data.length, mode, make_parents: true } });
    stream.write({ data });
    stream.end();
  });
}

function readFile(client, auth, sandboxId, filePath) {
  return new Promise((resolve, reject) => {
    const parts = [];
    const stream = client.ReadFile({ sandbox_id: sandboxId, path: filePath }, auth);
    stream.on('data', (m) => { if (m.data && m.data.length) parts.push(m.data); });
    stream.on('error', reject);
    stream.on('end', () => resolve(Buffer.concat(parts)));
  });
}

// Runs one command in the session; output goes to stdout/stderr as it streams.
function run(client, auth, session, command) {
  return new Promise((resolve, reject) => {
    let exit = null;
    const stream = client.RunSessionCommand(
      { sandbox_id: session.sandbox_id, session_id: session.session_id, command }, auth,
    );
    stream.on('data', (m) => {
      if (m.exit) exit = m.exit;
      else if (m.output.stream === 'OUTPUT_STREAM_STDERR') process.stderr.write(m.output.data);
      else process.stdout.write(m.output.data);
    });
    stream.on('error', reject);
    stream.on('end', () => (exit ? resolve(exit) : reject(new Error('no exit status'))));
  });
}

async function main() {
  const sandboxId = process.argv[2];
  if (!sandboxId) throw new Error('usage: node session.js SANDBOX');
  const client = sandboxService(process.env.LONGSHORE_GATEWAY_ADDR || '127.0.0.1:50051');
  const auth = new grpc.Metadata();
  auth.set('authorization', `Bearer ${process.env.LONGSHORE_API_KEY}`);
  if (process.env.LONGSHORE_SANDBOX_TOKEN) {
    auth.set('longshore-sandbox-token', process.env.LONGSHORE_SANDBOX_TOKEN);
  }
  const script = Buffer.from('echo "$GREETING from $(pwd)" | tee out.txt\n');
  await writeFile(client, auth, sandboxId, '/work/node-demo/hello.sh', script, 0o755);
  const { session } = await call(client, 'OpenSession', { sandbox_id: sandboxId }, auth);
  try {
    const first = await run(client, auth, session, 'cd /work/node-demo && export GREETING=hello');
    if (first.exit_code !== 0) throw new Error(`cd/export failed: ${first.exit_code}`);
    const second = await run(client, auth, session, './hello.sh');
    if (second.exit_code !== 0) throw new Error(`hello.sh failed: ${second.exit_code}`);
  } finally {
    await call(client, 'CloseSession', { sandbox_id: sandboxId, session_id: session.session_id }, auth);
  }
  const body = await readFile(client, auth, sandboxId, '/work/node-demo/out.txt');
  process.stdout.write(`read back: ${body.toString().trim()}\n`);
  if (body.toString() !== 'hello from /work/node-demo\n') throw new Error('unexpected file body');
  client.close();
}

main().catch((err) => {
  process.stderr.write(`session.js: ${err.message}\n`);
  process.exit(1);
});
