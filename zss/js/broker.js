// The real ZSS broker, on the ports given: runs the package's own bin/zss-broker, which reads its
// configuration from the environment (MICRO_BROKER_FE_ADDR, MICRO_BROKER_BE_ADDR, heartbeat, TTL).
// Usage: node broker.js FRONTEND BACKEND
var path = require('path');
process.env.MICRO_BROKER_FE_ADDR = process.argv[2];
process.env.MICRO_BROKER_BE_ADDR = process.argv[3];
process.env.MICRO_BROKER_LOG_LEVEL = process.env.MICRO_BROKER_LOG_LEVEL || 'info';
require(path.join(require.resolve('zmq-service-suite-broker'), '..', 'bin', 'zss-broker'));
