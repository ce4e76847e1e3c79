// Drives a desktop sandbox through the official TypeScript SDK's
// connectDesktop(), unchanged (desktop_test.go runs it). Prints "ok <step>"
// per step or throws. Env: SBX, PROXY, KEY, PORT (the VNC port), PASSWORD,
// WIDTH, HEIGHT, OUT (where the first screenshot is saved).
import { Sandbox } from "tensorlake";
import assert from "node:assert/strict";
import { inflateSync } from "node:zlib";
import { writeFileSync } from "node:fs";

const sb = new Sandbox({ sandboxId: process.env.SBX, proxyUrl: process.env.PROXY, apiKey: process.env.KEY });
const port = Number(process.env.PORT), password = process.env.PASSWORD;
const W = Number(process.env.WIDTH), H = Number(process.env.HEIGHT);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// decodePng: width, height and RGBA pixels of an 8-bit RGBA PNG, every
// row filter handled (the SDK writes filter 0; this does not rely on it).
function decodePng(buf) {
  assert.deepEqual([...buf.subarray(0, 8)], [137, 80, 78, 71, 13, 10, 26, 10], "PNG signature");
  let off = 8, w = 0, h = 0; const idat = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off), type = buf.toString("latin1", off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === "IHDR") {
      w = data.readUInt32BE(0); h = data.readUInt32BE(4);
      assert.equal(data[8], 8, "bit depth"); assert.equal(data[9], 6, "colour type RGBA");
    } else if (type === "IDAT") idat.push(data);
    off += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat)), stride = w * 4, px = Buffer.alloc(stride * h);
  for (let y = 0; y < h; y++) {
    const f = raw[y * (stride + 1)], src = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= 4 ? px[y * stride + x - 4] : 0, b = y > 0 ? px[(y - 1) * stride + x] : 0;
      const c = x >= 4 && y > 0 ? px[(y - 1) * stride + x - 4] : 0;
      const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
      const pred = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][f];
      px[y * stride + x] = (src[x] + pred) & 255;
    }
  }
  return { w, h, px };
}
// changed: how many pixels of the rectangle differ between two frames.
function changed(a, b, [x0, y0, x1, y1]) {
  let n = 0;
  for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) {
    const i = (y * a.w + x) * 4;
    if (a.px[i] !== b.px[i] || a.px[i + 1] !== b.px[i + 1] || a.px[i + 2] !== b.px[i + 2]) n++;
  }
  return n;
}
async function shot(d) { return decodePng(Buffer.from(await d.screenshot(10))); }
// until: screenshots (at most 40, 250 ms apart) until ok(frame) holds.
async function until(d, what, ok) {
  for (let i = 0; i < 40; i++) {
    const f = await shot(d);
    if (ok(f)) return f;
    await sleep(250);
  }
  throw new Error("timed out waiting for " + what);
}

// The terminal opens at +40+40 (openbox's Ctrl+Alt+T, image/desktop), 80x24
// cells of xfonts-base's 6x13 "fixed": its first rows are this rectangle.
const TEXT = [40, 40, 540, 120];
const FAR = [850, 250, 1200, 420]; // empty desktop: away from terminal, menu and panel
const MENU = [900, 450, 1150, 700]; // where the root menu opens on a right click at (900, 450)

let d = await sb.connectDesktop({ port, password, connectTimeout: 60 });
assert.equal(d.width, W); assert.equal(d.height, H);
const first = await until(d, "a desktop that is not uniform", (f) => {
  const seen = new Set();
  for (let i = 0; i < f.px.length && seen.size < 3; i += 4 * 97) seen.add(f.px.readUInt32BE(i));
  return seen.size >= 3;
});
assert.equal(first.w, W); assert.equal(first.h, H);
console.log("ok screenshot at " + Date.now());

await d.press(["ctrl", "alt", "t"]);
const term = await until(d, "the terminal to open", (f) => changed(first, f, TEXT) > 1000);
await sleep(500); // its first prompt drawn
const before = await shot(d);
await d.typeText("echo desktop-typed-$((6*7)) | tee /tmp/typed\n");
const typed = await until(d, "the typed text to show", (f) => changed(before, f, TEXT) > 200);
assert.ok(changed(before, typed, FAR) === 0, "typing changed the screen far from the terminal");
const ran = await sb.run("bash", { args: ["-c", "DISPLAY=:1 xdotool getactivewindow getwindowname"] });
let out = "";
for (let i = 0; i < 40 && out !== "desktop-typed-42"; i++, await sleep(250)) {
  out = (await sb.run("bash", { args: ["-c", "cat /tmp/typed 2>/dev/null"] })).stdout.trim();
}
assert.equal(out, "desktop-typed-42", "the typed command did not run in the terminal");
await sleep(300); // its output drawn
writeFileSync(process.env.OUT, Buffer.from(await d.screenshot(10)));
console.log("ok type (" + changed(before, typed, TEXT) + " pixels changed where the text went; active window " + ran.stdout.trim() + ")");

// The pointer is drawn into the framebuffer (the SDK asks for no cursor
// pseudo-encoding): moving it changes the screen where it goes.
await d.moveMouse(900, 450);
const moved = await until(d, "the pointer at (900, 450)", (f) => changed(typed, f, [890, 440, 930, 480]) > 0);
await d.click({ button: "right", x: 900, y: 450 });
const menu = await until(d, "the root menu at (900, 450)", (f) => changed(moved, f, MENU) > 2000);
await d.press("escape");
await until(d, "the root menu to close", (f) => changed(moved, f, MENU) < 50);
console.log("ok click (" + changed(moved, menu, MENU) + " pixels of the menu)");

await assert.rejects(sb.connectDesktop({ port, password: password === "x" ? "y" : "x", connectTimeout: 20 }), "a wrong password was accepted");
console.log("ok wrong_password");

await d.close();
d = await sb.connectDesktop({ port, password, connectTimeout: 30 });
const again = await shot(d);
assert.ok(changed(before, again, TEXT) > 200, "the typed text is gone after a reconnect");
assert.ok(changed(moved, again, TEXT) < 50, "the terminal changed across the reconnect");
await d.close();
console.log("ok reconnect");
