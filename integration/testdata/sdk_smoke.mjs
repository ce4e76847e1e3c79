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
  async run_many() {
    // Every line of a fast writer arrives: the agent reads the pipe at
    // the client's pace (the SDK's run() once returned about half).
    const r = await sb.run("seq", { args: ["1", "100000"] });
    assert.equal(r.exitCode, 0);
    const lines = r.stdout.split("\n");
    assert.equal(lines.length, 100000);
    assert.equal(lines[99999], "100000");
  },
  async follow_skipped() {
    // 100 lines of 65,535 bytes: the kept 4 MiB hold the last 64, so a
    // follower that joins later gets `event: skipped` (36) first; the SDK
    // passes over it. (Kept small: the SDK's follow itself delivers only
    // about 2,000 events of a fast replay, with this agent or before.)
    const p = await sb.startProcess("sh", { args: ["-c", "for i in $(seq 100); do head -c 65535 /dev/zero | tr '\\0' a; echo; done"] });
    for (let i = 0; i < 200 && (await sb.getProcess(p.pid)).status === "running"; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const lines = [];
    for await (const ev of sb.followOutput(p.pid)) lines.push(ev.line);
    assert.equal(lines.length, 64);
    assert.ok(lines.every((l) => l.length === 65535));
  },
  async run_timeout() {
    const r = await sb.run("sleep", { args: ["30"], timeout: 1 });
    assert.equal(r.exitCode, -9); // {"signal": 9}, as the SDK maps it
  },
  async process_io() {
    const p = await sb.startProcess("sh", { args: ["-c", "read l; echo got:$l; echo e >&2"], stdinMode: "pipe" });
    assert.equal(p.stdinWritable, true);
    await sb.writeStdin(p.pid, new TextEncoder().encode("x\n"));
    await sb.closeStdin(p.pid);
    const lines = [];
    for await (const ev of sb.followOutput(p.pid)) lines.push(ev.stream + ":" + ev.line);
    assert.deepEqual(lines.sort(), ["stderr:e", "stdout:got:x"]);
    const info = await sb.getProcess(p.pid);
    assert.equal(info.status, "exited");
    assert.equal(info.exitCode, 0);
    assert.ok(info.endedAt instanceof Date);
    const out = await sb.getStdout(p.pid);
    assert.deepEqual(out.lines, ["got:x"]);
    assert.equal(out.lineCount, 1);
    const followed = [];
    for await (const ev of sb.followStderr(p.pid)) followed.push(ev.line);
    assert.deepEqual(followed, ["e"]);
  },
  async supervised() {
    const svc = await sb.startProcess("sleep", { args: ["60"], name: "sdk-svc", restart: { policy: "always", initialBackoffMs: 100 } });
    assert.equal(svc.managed.name, "sdk-svc");
    assert.equal(svc.managed.restart.policy, "always");
    const sig = await sb.sendSignal("sdk-svc", 15);
    assert.equal(sig.success, true);
    let again;
    for (let i = 0; i < 50; i++) {
      again = await sb.getProcess("sdk-svc");
      if (again.pid !== svc.pid && again.status === "running") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.notEqual(again.pid, svc.pid);
    assert.ok(again.managed.restartCount >= 1);
    const re = await sb.restartProcess("sdk-svc");
    assert.notEqual(re.pid, again.pid);
    await sb.killProcess("sdk-svc");
  },
  async services() {
    // The image's boot services (sdk_test.go declares them) are processes
    // like any other: listed, found by name, restarted, killed.
    let web;
    for (let i = 0; i < 100; i++) {
      const list = await sb.listProcesses();
      web = list.find((x) => x.managed && x.managed.name === "web");
      if (web && web.status === "running" && list.some((x) => x.managed && x.managed.name === "db")) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(web, "web is listed");
    const got = await sb.getProcess("web");
    assert.equal(got.pid, web.pid);
    const re = await sb.restartProcess("web");
    assert.notEqual(re.pid, web.pid);
    await sb.killProcess("web");
    let after;
    for (let i = 0; i < 100; i++) {
      after = await sb.getProcess("web");
      if (after.status !== "running") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.notEqual(after.status, "running");
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
  // connectDesktop against a minimal RFB server (rfb_test.go's fakeRFB,
  // which speaks first as VNC does), without a container. The greeting
  // race the tunnel's first-byte hold fixes did not show here, only in
  // TestImageDesktop: this step checks the SDK's RFB path, not the hold.
  async desktop() {
    const d = await sb.connectDesktop({ port: Number(process.env.RFB_PORT), connectTimeout: 20 });
    assert.equal(d.width, 4);
    const png = Buffer.from(await d.screenshot(10));
    assert.deepEqual([...png.subarray(1, 4)], [80, 78, 71]); // "PNG"
    assert.equal(png.readUInt32BE(16), 4);
    assert.equal(png.readUInt32BE(20), 2);
    await d.moveMouse(1, 1);
    await d.press("enter");
    await d.close();
  },
  async tunnel() {
    const port = Number(process.env.TUNNEL_PORT);
    // The local port defaults to the remote one, taken here: the sandbox
    // shares this machine's network.
    const tunnel = await sb.createTunnel(port, { localPort: 0 });
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
