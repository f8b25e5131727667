// Sandbox Kernel's stream relay for Node.js images (KubernetesSandbox.stream_relay): the twin of
// relay.py, which says why. It holds the container's stdio (the attach stream) and runs the agent
// through unshare(1) in a user, PID and mount namespace of its own with a /proc of its own; the
// agent's stdio are socket pairs (libuv makes a socket pair for every 'pipe' of a child), which
// no /proc/<pid>/fd reopens. /bin/sh is PID 1 inside, reaping the orphans of the cells as in a
// pod without the relay (Node.js cannot wait for a process it did not start). unshare failing is
// an error: its message goes to the container's log and the relay exits with status 96.
'use strict';
const { spawn } = require('child_process');
const os = require('os');
const path = require('path');

const NAMESPACES_REFUSED = 96;
const UNSHARE = ['--user', '--map-current-user', '--pid', '--fork', '--mount-proc', '--kill-child', '--'];
const agent = path.join(__dirname, 'node_agent.js');
const child = spawn('unshare', [...UNSHARE, '/bin/sh', '-c', 'node "$0"; exit $?', agent], {
  stdio: ['pipe', 'pipe', 'pipe'],
});
let said = '';
let started = false;
child.on('error', (err) => {
  process.stderr.write(`unshare: cannot run unshare(1): ${err.message}\n`);
  process.exit(NAMESPACES_REFUSED);
});
child.stderr.on('data', (data) => {
  if (said.length < 200) said += data.toString('latin1');
  process.stderr.write(data);
});
// The kernel writes nothing before the agent's ready frame: start reading the stream then.
child.stdout.once('data', () => {
  started = true;
  process.stdin.pipe(child.stdin);
});
child.stdout.pipe(process.stdout);
child.stdin.on('error', () => {});
let ended = false;
let status = null;
child.stdout.on('end', () => {
  ended = true;
  if (status !== null) process.exit(status);
});
child.on('exit', (code, signal) => {
  if (!started && (code === 1 || code === NAMESPACES_REFUSED) && said.startsWith('unshare:')) {
    process.exit(NAMESPACES_REFUSED);
  }
  status = code === null ? 128 + (os.constants.signals[signal] || 9) : code;
  if (ended) process.exit(status);
  setTimeout(() => process.exit(status), 5000).unref(); // the last output, if it is still coming
});
for (const sig of ['SIGTERM', 'SIGHUP', 'SIGINT']) {
  process.on(sig, () => process.exit(128 + os.constants.signals[sig]));
}
