// E2B's JavaScript SDK (pinned in package.json, unpatched) against Longshore's
// front door. Run by tests/integration/e2b/test_e2b_node_sdk.py with
// E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set; the first argument is the
// template (a Longshore profile), the second a metadata value unique to the run.
// Prints one JSON object of observations for the Python side to check against
// the engine and kanban; any failure exits non-zero with the error.
import { randomBytes } from "node:crypto";
import { CommandExitError, Sandbox, TimeoutError } from "e2b";

const [template, suite] = process.argv.slice(2);
const out = {};
const sbx = await Sandbox.create(template, { metadata: { suite }, timeoutMs: 120_000 });
out.sandboxId = sbx.sandboxId;
try {
  const seen = { out: "", err: "" };
  const r = await sbx.commands.run("echo $GREETING; pwd; echo oops >&2", {
    envs: { GREETING: "hello" },
    cwd: "/tmp",
    timeoutMs: 30_000,
    onStdout: (d) => (seen.out += d),
    onStderr: (d) => (seen.err += d),
  });
  out.run = { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr, seen };
  try {
    await sbx.commands.run("echo bye; exit 3", { timeoutMs: 30_000 });
    out.exit = "no error";
  } catch (e) {
    out.exit = e instanceof CommandExitError ? { exitCode: e.exitCode, stdout: e.stdout } : String(e);
  }
  try {
    await sbx.commands.run("sleep 42", { timeoutMs: 2_000 });
    out.timeout = "no error";
  } catch (e) {
    out.timeout = e instanceof TimeoutError ? "TimeoutError" : `${e.name}: ${e.message}`;
  }
  out.psAfterTimeout = (await sbx.commands.run("ps -o args", { timeoutMs: 30_000 })).stdout;

  const bg = await sbx.commands.run("cat; echo done", { background: true, stdin: true, timeoutMs: 60_000 });
  out.listed = (await sbx.commands.list()).map((p) => p.pid).includes(bg.pid);
  await sbx.commands.sendStdin(bg.pid, "ping\n");
  const again = await sbx.commands.connect(bg.pid, { timeoutMs: 60_000 });
  await sbx.commands.closeStdin(bg.pid);
  const done = await again.wait();
  out.background = { exitCode: done.exitCode, stdout: done.stdout };
  const sleeper = await sbx.commands.run("sleep 302", { background: true, timeoutMs: 120_000 });
  out.killed = await sbx.commands.kill(sleeper.pid);
  out.psAfterKill = (await sbx.commands.run("ps -o args", { timeoutMs: 30_000 })).stdout;

  await sbx.files.write("/work/hello.txt", "hi there\n");
  out.text = await sbx.files.read("/work/hello.txt");
  const blob = randomBytes(10 * 1024 * 1024);
  await sbx.files.write("/work/blob.bin", blob.buffer.slice(blob.byteOffset, blob.byteOffset + blob.length));
  const back = await sbx.files.read("/work/blob.bin", { format: "bytes" });
  out.binaryEqual = Buffer.compare(Buffer.from(back), blob) === 0;
  out.names = (await sbx.files.list("/work")).map((e) => e.name).sort();
  out.renamed = (await sbx.files.rename("/work/hello.txt", "/work/renamed.txt")).path;
  await sbx.files.remove("/work/blob.bin");
  out.existsAfter = {
    renamed: await sbx.files.exists("/work/renamed.txt"),
    blob: await sbx.files.exists("/work/blob.bin"),
  };
  out.madeDir = [await sbx.files.makeDir("/work/sub/deeper"), await sbx.files.makeDir("/work/sub/deeper")];

  await sbx.setTimeout(600_000);
  const info = await sbx.getInfo();
  out.info = { metadata: info.metadata, endAt: info.endAt.getTime() / 1000 };
  const listed = await Sandbox.list({ query: { metadata: { suite } } }).nextItems();
  out.listedIds = listed.map((s) => s.sandboxId);
} finally {
  await sbx.kill();
}
console.log(JSON.stringify(out));
