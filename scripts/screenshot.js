// A page's screenshot from headless Chromium over the DevTools protocol, after waiting in real
// time: chromium --screenshot runs the page on virtual time, and TensorBoard's charts were
// then drawn in some cards only. Used for docs/tensorboard_*.png.
//
//   node --experimental-websocket scripts/screenshot.js URL OUT.png [WAIT_MS] [CLICK_LABEL_REGEX]
//
// CLICK_LABEL_REGEX: buttons whose aria-label matches are clicked before the capture (e.g.
// "close" shuts TensorBoard's settings pane). Needs Node >= 20 and chromium on PATH.
const { spawn } = require("child_process");
const fs = require("fs");
const os = require("os");
const path = require("path");

const [url, out, wait = "15000", click = ""] = process.argv.slice(2);
const port = 9333;
const profile = fs.mkdtempSync(path.join(os.tmpdir(), "screenshot-"));
const chrome = spawn("chromium", [
  "--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
  "--hide-scrollbars", `--remote-debugging-port=${port}`, `--user-data-dir=${profile}`,
  "about:blank",
]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function clickButtons(pattern) {
  const re = new RegExp(pattern, "i");
  const hits = [...document.querySelectorAll("button")].filter((b) =>
    re.test(b.getAttribute("aria-label") || ""));
  hits.forEach((b) => b.click());
  return hits.length;
}

async function main() {
  let targets;
  for (let i = 0; i < 100 && !targets; i++) {
    try {
      targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
    } catch {
      await sleep(200);
    }
  }
  const ws = new WebSocket(targets.find((t) => t.type === "page").webSocketDebuggerUrl);
  const pending = new Map();
  let next = 0;
  ws.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (pending.has(data.id)) {
      pending.get(data.id)(data);
      pending.delete(data.id);
    }
  };
  await new Promise((resolve) => (ws.onopen = resolve));
  const send = (method, params = {}) =>
    new Promise((resolve) => {
      next += 1;
      pending.set(next, resolve);
      ws.send(JSON.stringify({ id: next, method, params }));
    });
  await send("Emulation.setDeviceMetricsOverride", {
    width: 1400, height: 1000, deviceScaleFactor: 1, mobile: false,
  });
  await send("Page.navigate", { url });
  await sleep(Number(wait));
  if (click) {
    const expression = `(${clickButtons.toString()})(${JSON.stringify(click)})`;
    const clicked = await send("Runtime.evaluate", { expression });
    console.log(`clicked ${clicked.result.result.value} button(s)`);
    await sleep(3000);
  }
  const shot = await send("Page.captureScreenshot", { format: "png" });
  fs.writeFileSync(out, Buffer.from(shot.result.data, "base64"));
  ws.close();
  console.log(`wrote ${out}`);
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => {
    chrome.once("exit", () => fs.rmSync(profile, { recursive: true, force: true }));
    chrome.kill();
  });
