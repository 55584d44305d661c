// A real gRPC client resolving `xds:///SERVICE` through the bootstrap in GRPC_XDS_BOOTSTRAP:
// Node's @grpc/grpc-js with @grpc/grpc-js-xds (no hand-written xDS client). The same protocol as
// client.py: calls `/echo.Echo/Who` without pause (one at a time) and prints, every 50 ms, one JSON
// line with the time (ms since the epoch), the calls answered by each server so far, and the
// failed calls. With `--keys`: one call per key read from stdin, with header x-key, printing
// `{"key": ..., "owner": ...}` per key.
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const service = process.argv[2];
const client = new grpc.Client(`xds:///${service}`, grpc.credentials.createInsecure());
const same = (b) => b;

function who(metadata) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 5000);
    client.makeUnaryRequest('/echo.Echo/Who', same, same, Buffer.alloc(0), metadata || new grpc.Metadata(),
      { deadline }, (err, value) => (err ? reject(err) : resolve(value.toString())));
  });
}

async function keys() {
  const rl = require('readline').createInterface({ input: process.stdin });
  for await (const line of rl) {
    const key = line.trim();
    if (!key) continue;
    const md = new grpc.Metadata();
    md.set('x-key', key);
    const owner = await who(md);
    process.stdout.write(JSON.stringify({ key, owner }) + '\n');
  }
  process.exit(0);
}

async function calls() {
  const counts = {};
  let errors = 0;
  let lastError = '';
  let next = Date.now();
  for (;;) {
    try {
      const name = await who();
      counts[name] = (counts[name] || 0) + 1;
    } catch (e) {
      errors += 1;
      lastError = `${e.code}: ${e.details}`;
      await new Promise((r) => setTimeout(r, 10));
    }
    const now = Date.now();
    if (now >= next) {
      process.stdout.write(JSON.stringify({ t: now, counts, errors, last_error: lastError }) + '\n');
      next = now + 50;
    }
  }
}

(process.argv[3] === '--keys' ? keys() : calls()).catch((e) => {
  process.stderr.write(`client.js: ${e.stack || e}\n`);
  process.exit(1);
});
