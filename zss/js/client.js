// Calls a ZSS service with the real JavaScript client and prints one JSON line:
// {"status":...,"headers":...,"payload":...} or {"error":{...}} (the client rejects non-2xx).
// Usage: node client.js FRONTEND SID VERB PAYLOAD_JSON [TIMEOUT_MS]
var Client = require('zmq-service-suite-client');
var Logger = require('logger-facade-nodejs');
Logger.use({ isDebug: function () { return false; }, isTrace: function () { return false; } });

var args = process.argv.slice(2);
var client = Client({ broker: args[0], timeout: parseInt(args[4] || '3000', 10) });
client.call(args[2], JSON.parse(args[3] || 'null'), { sid: args[1], headers: { 'x-request-id': 'js-test' } })
  .then(function (r) {
    console.log(JSON.stringify({ status: r.status, headers: r.headers, payload: r.payload }));
    process.exit(0);
  })
  .catch(function (e) {
    console.log(JSON.stringify({ error: e }));
    process.exit(0);
  });
