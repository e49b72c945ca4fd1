#!/usr/bin/env bash
# Opens a Chrome Trace Event Format file in a real viewer, offline, and saves
# a screenshot: speedscope (npm) served from 127.0.0.1, rendered by headless
# Chromium driven by Playwright. ui.perfetto.dev needs the internet and
# Debian's chromium disables chrome://tracing, so this is the viewer that
# works here; the same file opens in Perfetto where it is reachable.
#
#   scripts/trace-screenshot.sh [TRACE.json] [OUT.png]
#
# Defaults: target/profile-readme/trace.json -> docs/img/trace-speedscope.png.
# Installs chromium (apt) and playwright-core + speedscope (npm, into
# target/trace-viewer) when missing; later runs reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
trace=${1:-target/profile-readme/trace.json}
out=${2:-docs/img/trace-speedscope.png}
viewer=${TRACE_VIEWER_DIR:-target/trace-viewer}

[ -f "$trace" ] || { echo "no trace at $trace (run taskpath profile ... --out DIR first)" >&2; exit 1; }
if ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
mkdir -p "$viewer"
if [ ! -f "$viewer/node_modules/speedscope/dist/release/index.html" ] ||
   [ ! -d "$viewer/node_modules/playwright-core" ]; then
    (cd "$viewer" && npm install --silent --no-audit --no-fund playwright-core@1 speedscope >/dev/null)
fi
mkdir -p "$(dirname "$out")"

node - "$viewer" "$trace" "$out" <<'JS'
const path = require('path');
const fs = require('fs');
const http = require('http');
const [viewer, trace, out] = process.argv.slice(2);
const { chromium } = require(path.resolve(viewer, 'node_modules/playwright-core'));
const root = path.resolve(viewer, 'node_modules/speedscope/dist/release');
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css',
                '.json': 'application/json', '.png': 'image/png', '.wasm': 'application/wasm' };
const server = http.createServer((req, res) => {
  const url = decodeURIComponent(req.url.split('?')[0].split('#')[0]);
  const file = url === '/trace.json' ? path.resolve(trace)
    : path.join(root, path.normalize(url === '/' ? '/index.html' : url));
  if (url !== '/trace.json' && !file.startsWith(root)) { res.writeHead(403); return res.end(); }
  fs.readFile(file, (err, data) => {
    if (err) { res.writeHead(404); return res.end(); }
    res.writeHead(200, { 'Content-Type': types[path.extname(file)] || 'application/octet-stream' });
    res.end(data);
  });
});
server.listen(0, '127.0.0.1', async () => {
  const port = server.address().port;
  const base = `http://127.0.0.1:${port}`;
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-dev-shm-usage'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
    const errors = [];
    page.on('pageerror', e => errors.push(String(e)));
    // speedscope warns when the events do not nest as it reads them
    // ("Tried to end ...", "... was still open"): a broken trace.
    page.on('console', m => {
      if (/Tried to end|still open/.test(m.text())) errors.push(m.text());
    });
    await page.goto(`${base}/index.html#profileURL=${encodeURIComponent(base + '/trace.json')}`);
    // speedscope shows the flame chart on a canvas once the profile is imported.
    await page.waitForSelector('canvas', { timeout: 30000 });
    await page.waitForTimeout(1500);
    const text = await page.evaluate(() => document.body.innerText);
    if (/something went wrong|could not|error/i.test(text.slice(0, 400))) {
      throw new Error('speedscope reported: ' + text.slice(0, 400));
    }
    if (errors.length) throw new Error(`${errors.length} errors, first: ${errors.slice(0, 3).join('; ')}`);
    await page.screenshot({ path: out });
    console.log(`wrote ${out} (speedscope ${base}, ${fs.statSync(trace).size} bytes of trace)`);
  } finally {
    await browser.close();
    server.close();
  }
});
JS
