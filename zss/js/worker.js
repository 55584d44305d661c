// A real JavaScript ZSS worker: sid from argv, verbs LIST (answers "pong from js"), ECHO (answers
// the payload) and SLOW (never answers). Prints "worker up" once running.
// Usage: node worker.js BACKEND SID
var Service = require('zmq-service-suite-service');
var args = process.argv.slice(2);
var service = new Service({ broker: args[0], sid: args[1], heartbeat: 500 });
service.addVerb('LIST', function (payload, message, reply) { reply(null, 'pong from js'); });
service.addVerb('ECHO', function (payload, message, reply) { reply(null, { echo: payload, client: message.client }); });
service.addVerb('SLOW', function () { /* never answers */ });
service.run();
console.log('worker up');
process.on('SIGTERM', function () { service.stop(); setTimeout(function () { process.exit(0); }, 1000); });
