// Drives the official Tensorlake JS SDK (npm `tensorlake`) against a
// sandbox through tl-proxy: processes, files and tunnels. Run by
// TestSDKProcessesFilesTunnels with PROXY_URL, API_KEY, SANDBOX_ID and
// TARGET_PORT (an HTTP server on loopback) in the environment.
import { Sandbox } from 'tensorlake';
import http from 'node:http';

const sb = new Sandbox({ sandboxId: process.env.SANDBOX_ID, proxyUrl: process.env.PROXY_URL, apiKey: process.env.API_KEY });
let failures = 0;
function check(ok, what, got) {
  if (!ok) { failures++; console.log(`FAIL ${what}: ${JSON.stringify(got)}`); } else { console.log(`ok   ${what}`); }
}

const r = await sb.run('sh', { args: ['-c', 'echo hi; echo err >&2; id -un; exit 3'] });
check(r.exitCode === 3 && r.stdout === 'hi\ntl-user' && r.stderr === 'err', 'run', r);
const t = await sb.run('sleep', { args: ['30'], timeout: 1 });
check(t.exitCode === -9, 'run timeout', t);

const p = await sb.startProcess('sh', { args: ['-c', 'read l; echo got:$l'], stdinMode: 'pipe' });
check(p.pid > 0 && p.status === 'running' && p.stdinWritable === true, 'startProcess', p);
await sb.writeStdin(p.pid, 'x\n');
await sb.closeStdin(p.pid);
const lines = [];
for await (const ev of sb.followOutput(p.pid)) lines.push(ev.line);
check(lines.join(',') === 'got:x', 'followOutput', lines);
const info = await sb.getProcess(p.pid);
check(info.status === 'exited' && info.exitCode === 0 && info.endedAt instanceof Date, 'getProcess', info);
const out = await sb.getStdout(p.pid);
check(out.lines.join(',') === 'got:x' && out.lineCount === 1, 'getStdout', out);
const list = await sb.listProcesses();
check(list.some((x) => x.pid === p.pid), 'listProcesses', list.length);

const svc = await sb.startProcess('sleep', { args: ['60'], name: 'svc', restart: { policy: 'always', initialBackoffMs: 100 } });
check(svc.managed && svc.managed.name === 'svc' && svc.managed.restart.policy === 'always', 'startProcess named', svc.managed);
const sig = await sb.sendSignal('svc', 15);
check(sig.success === true, 'sendSignal', sig);
await new Promise((res) => setTimeout(res, 1000));
const again = await sb.getProcess('svc');
check(again.pid !== svc.pid && again.managed.restartCount >= 1, 'restarted after signal', again.managed);
const re = await sb.restartProcess('svc');
check(re.pid !== again.pid, 'restartProcess', re);
await sb.killProcess('svc');

await sb.writeFile('sdk/dir/a.txt', Buffer.from('hello sdk'));
const data = await sb.readFile('sdk/dir/a.txt');
check(Buffer.from(data).toString() === 'hello sdk', 'writeFile/readFile', Buffer.from(data).toString());
const dir = await sb.listDirectory('sdk');
check(dir.entries.length === 1 && dir.entries[0].name === 'dir' && dir.entries[0].isDir === true, 'listDirectory', dir);
await sb.deleteFile('sdk/dir/a.txt');
let missing = false;
try { await sb.readFile('sdk/dir/a.txt'); } catch (e) { missing = true; }
check(missing, 'deleteFile then readFile fails', missing);

// The local port defaults to the remote one, which is taken here: the
// sandbox shares this machine's network.
const tunnel = await sb.createTunnel(Number(process.env.TARGET_PORT), { localPort: 0 });
const { port } = tunnel.address();
const body = await new Promise((res, rej) => {
  http.get({ host: '127.0.0.1', port, path: '/via-tunnel', agent: false }, (resp) => {
    let b = '';
    resp.on('data', (d) => { b += d; });
    resp.on('end', () => res(b));
  }).on('error', rej);
});
check(body === 'tunnel ok /via-tunnel', 'createTunnel + HTTP', body);
await tunnel.close();

sb.close();
console.log(failures === 0 ? 'ALL OK' : `${failures} FAILED`);
process.exit(failures === 0 ? 0 : 1);
