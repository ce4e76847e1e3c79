// Drives a sandbox through the official TypeScript SDK (npm `tensorlake`),
// pointed at tl-proxy. Each step prints "ok <name>" or throws; the Go test
// (sdk_test.go) checks the list. STEPS selects steps (comma-separated).
import { Sandbox } from "tensorlake";
import net from "node:net";
import assert from "node:assert/strict";

const sb = new Sandbox({ sandboxId: process.env.SBX, proxyUrl: process.env.PROXY, apiKey: process.env.KEY });
const want = new Set((process.env.STEPS || "").split(",").filter(Boolean));
const steps = {
  async health() {
    const h = await sb.health();
    assert.equal(h.healthy, true);
  },
  async info() {
    const i = await sb.daemonInfo();
    assert.ok(i.version);
  },
  async run() {
    const r = await sb.run("bash", { args: ["-c", "echo out; echo err >&2; whoami; exit 3"] });
    assert.equal(r.exitCode, 3);
    assert.match(r.stdout, /out/);
    assert.match(r.stdout, /tl-user/);
    assert.match(r.stderr, /err/);
  },
  async files() {
    const data = new TextEncoder().encode("hello from the sdk\n");
    await sb.writeFile("sdk-dir/hello.txt", data);
    const back = await sb.readFile("sdk-dir/hello.txt");
    assert.equal(Buffer.from(back).toString(), "hello from the sdk\n");
    const list = await sb.listDirectory("sdk-dir");
    assert.equal(list.entries.length, 1);
    assert.equal(list.entries[0].name, "hello.txt");
    await sb.deleteFile("sdk-dir/hello.txt");
    await assert.rejects(sb.readFile("sdk-dir/hello.txt"));
  },
  async processes() {
    const p = await sb.startProcess("sh", { args: ["-c", "echo started; sleep 30"] });
    assert.ok(p.pid > 0);
    const got = await sb.getProcess(p.pid);
    assert.equal(got.status, "running");
    await sb.killProcess(p.pid);
    const list = await sb.listProcesses();
    assert.ok(list.some((x) => x.pid === p.pid));
  },
  async pty() {
    let out = "";
    const pty = await sb.createPty({ command: "bash", args: ["--norc", "-i"], rows: 24, cols: 80, onData: (d) => { out += Buffer.from(d).toString(); } });
    await pty.sendInput("echo pty-$((6*7))\n");
    await pty.sendInput("exit 5\n");
    const code = await pty.wait();
    assert.equal(code, 5);
    assert.match(out, /pty-42/);
  },
  async tunnel() {
    const port = Number(process.env.TUNNEL_PORT);
    const tunnel = await sb.createTunnel(port);
    const addr = tunnel.address ? tunnel.address() : { host: "127.0.0.1", port: tunnel.localPort };
    const reply = await new Promise((resolve, reject) => {
      const c = net.connect(addr.port, addr.host || "127.0.0.1", () => c.write("ping\n"));
      let buf = "";
      c.on("data", (d) => { buf += d; if (buf.includes("\n")) { c.end(); resolve(buf); } });
      c.on("error", reject);
    });
    assert.equal(reply, "pong:ping\n");
    await tunnel.close();
  },
};
for (const [name, fn] of Object.entries(steps)) {
  if (want.size && !want.has(name)) continue;
  await fn();
  console.log("ok " + name);
}
process.exit(0);
