#!/usr/bin/env node
// Sandbox Kernel agent for JavaScript (Node.js >= 18, standard library only).
//
// Speaks the framed protocol of PROTOCOL.md on stdin/stdout. Run as `node node_agent.js`;
// on Kubernetes it is PID 1 of its container.
//
// WHY TWO PROCESSES. Node cannot dup2(), so it cannot move the protocol off fd 0/1 inside one
// process. Instead this file runs twice (after the launcher, see launcher()):
//
//   * the SUPERVISOR (no arguments) keeps the real stdin/stdout as the protocol stream. It never
//     runs user code. It spawns
//   * the WORKER (`--worker`), which runs the cells. Its fd 0 is /dev/null, its fd 1 and fd 2 are
//     pipes the supervisor reads and wraps into `out`/`err` frames, and fd 3 is a Node IPC
//     channel (JSON messages both ways) for execute/result/display/... messages.
//
//   Whatever user code does to fd 1/2 (console.log, fs.writeSync(1, '\0...'), subprocesses with
//   stdio 'inherit', background jobs, closing fd 1) only reaches those pipes; only the supervisor
//   writes the protocol stream, one whole frame per write.
//
// RESUMING (PROTOCOL.md, "Resuming after a dropped stream"). Every frame the supervisor writes
// goes through writeFrame(), which counts the output offset and also keeps the frame, whole, in a
// replay buffer (a list of Buffers plus a running byte total, trimmed from the front while the
// frames left still hold at least REPLAY_BYTES = 8 MiB, or $SANDBOX_AGENT_REPLAY_BYTES, read once
// at start). The stdin reader counts every frame it reads. A `resume` is answered at once, even
// while a cell runs: one write of the line `resume <token> <from> <received>\n` followed by the
// kept bytes from offset `from` on. Being single-threaded, nothing can come in between; those
// bytes are not counted in the output offset.
//
// ORDERING ("done" after all output). In the worker, process.stdout/stderr write synchronously
// to fd 1/2 (see syncWrite: Node's own pipe streams queue in memory and can be left stuck by an
// interrupt). Before the worker sends a message whose position matters (display, and the final
// result/error/done) it writes a MARKER -- a random per-worker prefix plus a sequence number, one
// small atomic write -- to fd 1 and fd 2, then sends the message over IPC with that number. The
// supervisor strips markers out of the pipes, holds the message back until it has seen its
// marker on both pipes, and holds output that came after a marker until that marker's message is
// out. Fallbacks: a pipe that closed counts as seen; if the pipes stay quiet for 500 ms (user
// code closed fd 1, say) the message goes anyway. A background process that keeps fd 1 open
// cannot delay `done`: the marker still gets through.
//
// INTERRUPT. The supervisor keeps reading stdin while a cell runs, whatever the worker does.
//   * Synchronous code runs under vm.Script#runInThisContext({breakOnSigint: true}); SIGINT to the
//     worker makes V8 terminate the running script (even `while (true) {}`) and state is KEPT.
//   * An async cell that waits (top-level await of a long promise) is ended by the worker's SIGINT
//     listener: it reports the interrupt and abandons the pending promise. Every top-level
//     `await` of a cell is rewritten to check, when it resumes, that its cell is still the
//     current one, so an abandoned cell never runs any further statements.
//   * 0.5 s after the SIGINT the supervisor sends SIGINT to the worker's whole process group
//     (the worker is a session leader), which stops child processes the cell waits for, e.g.
//     execSync('sleep 100') -- and also background processes started in the same group that
//     do not handle SIGINT, as Ctrl-C in a terminal would.
//   * If the worker has not finished the cell 1.5 s after the interrupt (e.g. a tight loop after
//     an `await`, where V8 cannot be asked to stop), the supervisor SIGKILLs the worker's process
//     group, starts a fresh worker and reports that variables are gone. The kernel always gets
//     `done` well within its 2 s grace.
//
// STATE ACROSS CELLS (design choice). Node's `repl` module was considered and rejected: it feeds
// input line by line, mixes the printed result into its output stream, and does not allow a
// `let`/`const` to be declared again in a later input. Instead each cell is parsed with the acorn
// parser that ships inside Node (loaded via --expose-internals, the same parser Node's REPL uses
// for top-level await) and lightly rewritten, preserving line numbers:
//   * top-level `let`/`const` become `var`, and `class C {}` becomes `var C = class C {}`, so
//     they land on the global object and can be redeclared by later cells (`const` is therefore
//     not read-only);
//   * a cell with top-level `await` is wrapped in an async arrow function; its declarations are
//     hoisted as global `var`s and turned into assignments, function declarations are copied to
//     the global object, and the last expression statement is returned as the cell's value;
//   * `await`s at the top level check on resumption that the cell was not interrupted;
//   * `import()` calls go to a helper (a vm.Script has no module loader without experimental
//     flags) and static `import x from 'm'` lines become `const x = (await import('m')).default`.
// A cell with no top-level expression statement at the end has no result; a cell that is just
// `{a: 1}` is an object literal, as in the REPL.
// Cells run in the worker's main context (like the `node` CLI REPL, which uses useGlobal), so
// there are no cross-realm surprises (instanceof Array, Buffer) with require()d modules.
//
// PID 1. SIGTERM/SIGHUP/SIGINT get explicit handlers because PID 1 has no default signal
// actions. The worker is reaped by Node, but Node cannot waitpid(-1): orphaned grandchildren
// (`cmd &` inside execSync) that re-parent to PID 1 stay zombies until the pod ends.
// Where that matters, keep a shell as PID 1 (`sh -c 'node node_agent.js; exit $?'`
// -- sh reaps any child while it waits) or use shareProcessNamespace (the pause container reaps).
//
// LAYOUT. One section per role. supervisor() and worker() are short entry points that set up
// their role's state and wire its events; the rest of their section is top-level functions. A
// role's mutable state is one object (`sup` for the supervisor, `wrk` for the worker) made by
// its entry point and null in the other roles. The role is picked at the very end of the file,
// once every top-level declaration is initialized.
'use strict';

const fs = require('fs');
const path = require('path');
const vm = require('vm');
const util = require('util');
const childProcess = require('child_process');
const crypto = require('crypto');
const url = require('url');
const Module = require('module');

const MAX_PAYLOAD = 2 << 20; // PROTOCOL.md: frames carry at most 2 MiB
const DEFAULT_REPLAY_BYTES = 8 << 20; // PROTOCOL.md, "Resuming": keep at least 8 MiB of output
const RESUME_TOKEN = /^[0-9a-f]{32}$/;
const INTERNAL = '__sandboxKernel'; // prefix of the helper globals the rewritten cells call

const LANGUAGE_INFO = {
  name: 'javascript',
  version: process.versions.node,
  mimetype: 'application/javascript',
  file_extension: '.js',
  pygments_lexer: 'javascript',
  codemirror_mode: 'javascript',
};

const RESTARTED_MESSAGE = 'the JavaScript sandbox had to be restarted; variables from earlier cells are gone';
// ===========================================================================================
// Launcher: starts the supervisor so that user code cannot open the protocol stream.
// ===========================================================================================
//
// Processes of one uid can open each other's fds through /proc/<pid>/fd (and take them with
// pidfd_getfd) unless the owner is not "dumpable". Node cannot call prctl(PR_SET_DUMPABLE), but
// the kernel also clears the flag when a process execs a file it may not read. So the launcher
// copies the ELF interpreter (ld.so) of the node binary into a private directory, makes the copy
// execute-only and starts the supervisor through it (`ld.so node node_agent.js --supervisor`):
// the supervisor then has the protocol fds and a /proc/<pid>/fd no other process can open. The
// launcher itself replaces its fd 0/1 with /dev/null as soon as the supervisor runs, so it holds
// nothing of the stream either. Without an interpreter to copy (a static node, an exec-denied
// temporary directory, a uid with CAP_DAC_OVERRIDE) the supervisor runs as before and logs it.
function launcher() {
  const log = (...args) => {
    try {
      fs.writeSync(2, `[node_agent launcher] ${util.format(...args)}\n`);
    } catch (_) {
      /* nothing sensible to do */
    }
  };
  const node = process.execPath;
  const args = [...process.execArgv, __filename, '--supervisor'];
  const env = { ...process.env, SANDBOX_AGENT_NODE: node };
  let dir = null;
  let loader = null;
  try {
    const interp = elfInterpreter(node);
    // The first directory where the copy can be executed (/dev/shm is often mounted noexec).
    for (const base of interp ? ['/dev/shm', process.env.TMPDIR, '/tmp', process.env.HOME, process.cwd()] : []) {
      if (!base) continue;
      try {
        dir = fs.mkdtempSync(path.join(base, '.sknode.'));
        loader = path.join(dir, 'ld.so');
        fs.copyFileSync(interp, loader);
        fs.chmodSync(loader, 0o100);
        if (!childProcess.spawnSync(loader, ['--version'], { stdio: 'ignore' }).error) break;
      } catch (_) {
        /* next */
      }
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
      dir = null;
      loader = null;
    }
    if (!loader) log('no directory where an execute-only loader copy can run');
  } catch (e) {
    log('cannot prepare the execute-only loader:', e.message);
    loader = null;
  }
  const removeDir = () => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    dir = null;
  };
  let child = null;
  const start = (useLoader) => {
    child = useLoader ? childProcess.spawn(loader, [node, ...args], { stdio: 'inherit', env }) : childProcess.spawn(node, args, { stdio: 'inherit', env });
    child.on('spawn', () => {
      removeDir();
      // Hold nothing of the protocol stream: fd 0/1 become /dev/null (open() takes the lowest fd).
      try {
        fs.closeSync(0);
        fs.openSync('/dev/null', 'r');
        fs.closeSync(1);
        fs.openSync('/dev/null', 'w');
      } catch (e) {
        log('cannot close the protocol fds:', e.message);
      }
    });
    child.on('error', (e) => {
      if (useLoader) {
        log('cannot start the supervisor through the loader copy (%s); starting it directly', e.message);
        removeDir();
        start(false);
      } else {
        log('cannot start the supervisor:', e.message);
        process.exit(1);
      }
    });
    child.on('exit', (code, signal) => {
      removeDir();
      if (signal) process.kill(process.pid, signal);
      process.exit(code == null ? 1 : code);
    });
  };
  for (const sig of ['SIGTERM', 'SIGHUP', 'SIGINT']) {
    process.on(sig, () => {
      try {
        child.kill(sig);
      } catch (_) {
        /* gone */
      }
      if (sig !== 'SIGINT') setTimeout(() => process.exit(0), 1000).unref();
    });
  }
  start(loader !== null);
}

// The PT_INTERP of a 64-bit little-endian ELF file (e.g. /lib64/ld-linux-x86-64.so.2), or null.
function elfInterpreter(file) {
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(64);
    fs.readSync(fd, head, 0, 64, 0);
    if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) return null;
    const phoff = Number(head.readBigUInt64LE(0x20));
    const size = head.readUInt16LE(0x36);
    const count = head.readUInt16LE(0x38);
    const table = Buffer.alloc(size * count);
    fs.readSync(fd, table, 0, table.length, phoff);
    for (let i = 0; i < count; i++) {
      if (table.readUInt32LE(i * size) !== 3) continue; // PT_INTERP
      const off = Number(table.readBigUInt64LE(i * size + 8));
      const len = Number(table.readBigUInt64LE(i * size + 32));
      const name = Buffer.alloc(Math.min(len, 4096));
      fs.readSync(fd, name, 0, name.length, off);
      const text = name.toString('latin1').replace(/\0[\s\S]*$/, '');
      return text.startsWith('/') ? text : null;
    }
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

// Every string made well-formed (a lone UTF-16 surrogate becomes U+FFFD), so that the JSON is
// valid UTF-8 for the kernel; keys too. Non-JSON values are left to JSON.stringify.
function wellFormed(value, depth = 0) {
  if (typeof value === 'string') {
    return typeof value.toWellFormed === 'function'
      ? value.toWellFormed()
      : value.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
  }
  if (!value || typeof value !== 'object' || depth > 200) return value;
  if (Array.isArray(value)) return value.map((v) => wellFormed(v, depth + 1));
  if (typeof value.toJSON === 'function') return value;
  const out = {};
  for (const k of Object.keys(value)) out[wellFormed(k)] = wellFormed(value[k], depth + 1);
  return out;
}

function isPlainObject(v) {
  return !!v && typeof v === 'object' && !Array.isArray(v);
}
// ===========================================================================================
// Supervisor: owns the protocol stream, never runs user code.
// ===========================================================================================
//
// Its functions share one state object, `sup`, made by supervisor() (null in the other roles).
let sup = null;

function supervisor() {
  // The real node binary (started through a loader copy, process.execPath is that copy).
  const node = process.env.SANDBOX_AGENT_NODE || process.execPath;
  delete process.env.SANDBOX_AGENT_NODE;
  try {
    if (fs.statSync('/proc/self/fd').uid === process.getuid()) {
      log('warning: the supervisor is dumpable; user code could open the protocol stream through /proc');
    }
  } catch (_) {
    /* no /proc */
  }
  sup = {
    protocolOut: process.stdout,
    NODE: node,
    START_DIR: process.cwd(), // file_write / file_read paths are relative to it
    worker: null, // the current worker record (see startWorker)
    allWorkers: new Set(), // every worker that has not exited yet, the current one included
    readySent: false,
    // The running execute: {id, key, interrupting, timers, lost, finished, stdin, inputs, asking}.
    cell: null,
    // Output accounting of the current (or last) cell; output between cells counts against the
    // last cell's budget, so a background flood cannot bypass the limit.
    budget: { limit: 0, sent: 0, truncated: 0 },
    notice: null, // text to show at the start of the next cell (worker died between cells)
    noted: false, // the running cell was told once that a message in the worker's channel was dropped
    waiting: [], // kernel messages that arrived while no worker was up
    requests: new Map(), // id -> {type, key, timer}, for complete/inspect forwarded to the worker
    quickDeaths: 0,
    exiting: false,

    // Writing frames.
    paused: false, // worker pipes paused because the kernel reads slowly
    pausedAt: 0,
    // Resuming: the output offset (bytes of frames written so far), the most recent frames (whole,
    // oldest first, from replay[replayHead] on) and how many bytes they hold.
    REPLAY_BYTES: replayBytes(),
    written: 0,
    replay: [],
    replayHead: 0,
    replayKept: 0,
    received: 0, // frames read from the kernel

    // Reading stdin: bytes not yet parsed, and the header of the frame being read.
    inbuf: Buffer.alloc(0),
    need: null, // [kind, length]

    // input() answers (see inputChannel).
    inputPath: null,
    inputFd: -1,
  };

  sup.protocolOut.on('drain', onProtocolDrain);
  sup.protocolOut.on('error', (e) => {
    log('protocol stream failed:', e.message);
    shutdown(0);
  });
  process.on('exit', () => {
    for (const w of sup.allWorkers) killGroup(w, 'SIGKILL');
  });
  // PID 1 has no default signal actions: install the ones we want.
  process.on('SIGTERM', () => shutdown(0));
  process.on('SIGHUP', () => shutdown(0));
  process.on('SIGINT', () => interrupt()); // a Ctrl-C aimed at the agent means "interrupt the cell"
  process.on('uncaughtException', (e) => log('internal error (continuing):', e && e.stack));

  process.stdin.on('data', onKernelData);
  process.stdin.on('end', () => shutdown(0));
  process.stdin.on('error', () => shutdown(0));

  if (process.pid === 1) log('running as PID 1; orphaned processes cannot be reaped by Node');
  startWorker();
}

// The supervisor's log, on its stderr (the container's log). The launcher has one of its own.
function log(...args) {
  try {
    process.stderr.write(`[node_agent ${new Date().toISOString()}] ${util.format(...args)}\n`);
  } catch (_) {
    /* nothing sensible to do */
  }
}

// ---- writing frames -----------------------------------------------------------------------

function replayBytes() {
  const value = process.env.SANDBOX_AGENT_REPLAY_BYTES;
  if (value === undefined || value === '') return DEFAULT_REPLAY_BYTES;
  const n = /^[0-9]+$/.test(value) ? Number(value) : NaN;
  if (Number.isSafeInteger(n)) return n;
  log('ignoring an invalid SANDBOX_AGENT_REPLAY_BYTES:', JSON.stringify(value));
  return DEFAULT_REPLAY_BYTES;
}

function writeRaw(buf) {
  const ok = sup.protocolOut.write(buf);
  if (!ok && !sup.paused) pauseWorkerPipes();
}

function writeFrame(kind, payload) {
  let off = 0;
  do {
    const part = payload.subarray(off, off + MAX_PAYLOAD);
    const frame = Buffer.concat([Buffer.from(`${kind} ${part.length}\n`, 'latin1'), part]);
    writeRaw(frame);
    sup.written += frame.length;
    sup.replay.push(frame);
    sup.replayKept += frame.length;
    // Drop the oldest frame only while the frames left still hold at least REPLAY_BYTES.
    while (sup.replayHead < sup.replay.length && sup.replayKept - sup.replay[sup.replayHead].length >= sup.REPLAY_BYTES) {
      sup.replayKept -= sup.replay[sup.replayHead].length;
      sup.replay[sup.replayHead++] = undefined;
    }
    if (sup.replayHead > 1024 && sup.replayHead * 2 > sup.replay.length) {
      sup.replay = sup.replay.slice(sup.replayHead);
      sup.replayHead = 0;
    }
    off += MAX_PAYLOAD;
  } while (off < payload.length);
}

// The kernel re-opened the stream: mark the spot, then repeat what it missed (not counted).
function answerResume(m) {
  const { token, offset } = m;
  if (typeof token !== 'string' || !RESUME_TOKEN.test(token) || !Number.isSafeInteger(offset) || offset < 0) {
    log('ignoring a malformed resume:', JSON.stringify(m).slice(0, 300));
    return;
  }
  const first = sup.written - sup.replayKept;
  const start = Math.min(Math.max(offset, first), sup.written);
  if (start > offset) log(`resume: ${start - offset} bytes of output were no longer kept`);
  const parts = [Buffer.from(`resume ${token} ${start} ${sup.received}\n`, 'latin1')];
  let skip = start - first;
  for (let i = sup.replayHead; i < sup.replay.length; i++) {
    const frame = sup.replay[i];
    if (skip >= frame.length) {
      skip -= frame.length;
      continue;
    }
    parts.push(skip ? frame.subarray(skip) : frame);
    skip = 0;
  }
  writeRaw(parts.length === 1 ? parts[0] : Buffer.concat(parts));
}

function pauseWorkerPipes() {
  sup.paused = true;
  sup.pausedAt = Date.now();
  if (sup.worker) {
    sup.worker.proc.stdout.pause();
    sup.worker.proc.stderr.pause();
  }
}

// The kernel caught up: read the worker's pipes again.
function onProtocolDrain() {
  if (!sup.paused) return;
  sup.paused = false;
  // Time spent waiting for the kernel does not count towards the marker fallback timeouts.
  const now = Date.now();
  for (const w of sup.allWorkers) {
    w.lastData = now;
    for (const m of w.queue) m.arrived += now - sup.pausedAt;
  }
  if (sup.worker) {
    sup.worker.proc.stdout.resume();
    sup.worker.proc.stderr.resume();
  }
  for (const w of sup.allWorkers) w.kick();
}

function sendToKernel(body) {
  body = wellFormed(body);
  let payload = Buffer.from(JSON.stringify(body), 'utf8');
  if (payload.length > MAX_PAYLOAD) payload = Buffer.from(JSON.stringify(shrink(body)), 'utf8');
  if (payload.length > MAX_PAYLOAD) {
    payload = Buffer.from(JSON.stringify({ type: body.type, id: body.id, data: {}, metadata: {} }), 'utf8');
  }
  writeFrame('msg', payload);
}

// Keep a message under the frame limit: only a cut text/plain survives.
function shrink(body) {
  const cut = (s, n) => (typeof s === 'string' && s.length > n ? `${s.slice(0, n)}\n... [truncated]` : s);
  const copy = { ...body };
  if (copy.data && typeof copy.data === 'object') {
    const plain = copy.data['text/plain'];
    const dropped = Object.keys(copy.data).filter((k) => k !== 'text/plain');
    const note = dropped.length ? `\n[${dropped.join(', ')} not shown: larger than the 2 MiB message limit]` : '';
    copy.data = { 'text/plain': cut(typeof plain === 'string' ? plain : '', 100000) + note };
  }
  if (copy.evalue) copy.evalue = cut(copy.evalue, 10000);
  if (Array.isArray(copy.traceback)) copy.traceback = copy.traceback.slice(0, 200).map((l) => cut(l, 2000));
  if (Array.isArray(copy.matches)) copy.matches = copy.matches.slice(0, 1000);
  return copy;
}

function forward(kind, buf, b = sup.budget) {
  if (!buf.length) return;
  let keep = buf.length;
  if (b.limit > 0) keep = Math.max(0, Math.min(buf.length, b.limit - b.sent));
  b.truncated += buf.length - keep;
  b.sent += keep;
  // Over the limit we drop the bytes but keep reading, so the user's program never blocks.
  if (keep) writeFrame(kind, keep === buf.length ? buf : buf.subarray(0, keep));
}

// ---- the worker ---------------------------------------------------------------------------

function startWorker() {
  if (sup.exiting) return;
  const prefix = Buffer.concat([Buffer.from('\x01\x02SKM', 'latin1'), Buffer.from(crypto.randomBytes(12).toString('hex'), 'latin1')]);
  const markerLength = prefix.length + 9; // prefix + 8 hex digits + '\x03'
  const args = ['--expose-internals', ...process.execArgv, __filename, '--worker'];
  let proc;
  try {
    proc = childProcess.spawn(sup.NODE, args, {
      // fd 0 /dev/null, fd 1/2 pipes we read, fd 3 the IPC control channel.
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      // New session: the worker leads a process group holding everything user code starts, so
      // an interrupt can reach `execSync('sleep 100')` and a restart kills it all.
      detached: true,
      cwd: process.cwd(),
      env: process.env,
    });
  } catch (e) {
    log('cannot start the worker:', e.message);
    shutdown(1);
    return;
  }
  const w = {
    proc,
    pid: proc.pid,
    prefix,
    markerLength,
    seen: { out: -1, err: -1 },
    ended: { out: false, err: false },
    lastData: Date.now(),
    hello: false,
    dead: false,
    started: Date.now(),
    queue: [], // worker messages waiting for their markers
    delivered: 0, // seq of the last message delivered (every marker belongs to one message)
    held: [], // output that came after a marker whose message is not delivered yet
    heldBytes: 0,
    timer: null,
    kick: () => drainQueue(w),
  };
  sup.allWorkers.add(w);
  sup.worker = w;
  if (sup.paused) {
    proc.stdout.pause();
    proc.stderr.pause();
  }
  for (const [stream, kind] of [[proc.stdout, 'out'], [proc.stderr, 'err']]) {
    const scan = scanner(w, kind);
    stream.on('data', scan);
    const ended = () => {
      if (w.ended[kind]) return;
      scan.flush();
      w.ended[kind] = true;
      drainQueue(w);
    };
    stream.on('end', ended);
    stream.on('close', ended);
    stream.on('error', () => {});
  }
  proc.on('message', (m) => onWorkerMessage(w, m));
  // A worker that never says hello is replaced (the exit handler counts it as a failed start).
  const helloTimer = setTimeout(() => {
    if (!w.hello && !w.dead) {
      log('the worker did not start within 20 s; killing it');
      killGroup(w, 'SIGKILL');
    }
  }, 20000);
  helloTimer.unref();
  proc.on('error', (e) => log('worker error:', e.message));
  proc.on('exit', (code, signal) => onWorkerExit(w, code, signal));
  proc.send({ type: 'init', prefix: prefix.toString('latin1') }, () => {});
  return w;
}

function onWorkerExit(w, code, signal) {
  w.dead = true;
  sup.allWorkers.delete(w);
  if (w === sup.worker) {
    // It died on its own: user code called process.exit(), ran out of memory, ...
    const how = signal
      ? `was killed by ${signal}${signal === 'SIGKILL' || signal === 'SIGABRT' ? ' (out of memory?)' : ''}`
      : `exited with code ${code}`;
    if (!w.hello && ++sup.quickDeaths >= 3) {
      log('the worker keeps dying at start-up; giving up');
      shutdown(1);
      return;
    }
    lose(w, `the JavaScript process ${how}`, 'error');
  }
}

// Split the worker's pipe output into user bytes (forwarded) and our markers (recorded).
function scanner(w, kind) {
  let carry = Buffer.alloc(0);
  const P = w.prefix;
  const scan = (chunk) => {
    w.lastData = Date.now();
    let buf = carry.length ? Buffer.concat([carry, chunk]) : chunk;
    carry = Buffer.alloc(0);
    for (;;) {
      const at = buf.indexOf(P);
      if (at < 0) {
        // Hold back a tail that could be the start of a marker split across reads.
        let k = Math.min(P.length - 1, buf.length);
        while (k > 0 && !buf.subarray(buf.length - k).equals(P.subarray(0, k))) k--;
        emit(w, kind, buf.subarray(0, buf.length - k));
        carry = Buffer.from(buf.subarray(buf.length - k));
        break;
      }
      if (buf.length < at + w.markerLength) {
        emit(w, kind, buf.subarray(0, at));
        carry = Buffer.from(buf.subarray(at));
        break;
      }
      emit(w, kind, buf.subarray(0, at));
      const seq = parseInt(buf.subarray(at + P.length, at + P.length + 8).toString('latin1'), 16);
      if (seq > w.seen[kind]) w.seen[kind] = seq;
      buf = buf.subarray(at + w.markerLength);
    }
    drainQueue(w);
  };
  scan.flush = () => {
    emit(w, kind, carry); // the pipe closed: a held-back tail was not a marker after all
    carry = Buffer.alloc(0);
  };
  return scan;
}

// Output written after marker N must not overtake message N: hold it until N is delivered.
function emit(w, kind, buf) {
  if (!buf.length) return;
  if (w.seen[kind] < w.delivered && w.lastBudget) {
    // Late output of a cell whose `done` went out on the fallback timeout: still its budget.
    forward(kind, buf, w.lastBudget);
  } else if (w.held.length || w.seen[kind] > w.delivered) {
    w.held.push({ kind, buf: Buffer.from(buf), after: w.seen[kind] });
    w.heldBytes += buf.length;
  } else {
    forward(kind, buf);
  }
}

function releaseHeld(w, all) {
  while (w.held.length && (all || w.held[0].after <= w.delivered)) {
    const h = w.held.shift();
    w.heldBytes -= h.buf.length;
    forward(h.kind, h.buf);
  }
}

// A message user code wrote into the worker's channel (process.send, fd 3) is dropped, with
// one note on the cell's stderr: control messages must carry the key of their request.
function dropped(why) {
  log('dropped a message from the worker:', why);
  if (sup.noted) return;
  sup.noted = true;
  forward('err', Buffer.from(`[sandbox] ignored a message written into the agent's private channel (${why})\n`, 'utf8'));
}

function onWorkerMessage(w, m) {
  if (!isPlainObject(m)) return;
  const cell = sup.cell;
  if (m.type === 'input_request') {
    // input() / getpass() of the running cell, which may ask (allow_stdin): one at a time.
    if (w !== sup.worker || !cell || m.key !== cell.key) return dropped("input_request without this cell's key");
    if (!cell.stdin) return dropped('input_request of a cell that may not ask');
    if (cell.interrupting) return answerInput(cell, { interrupt: true });
    if (cell.asking) return answerInput(cell, { error: 'only one input() at a time' });
    cell.asking = ++cell.inputs;
    sendToKernel({ type: 'input_request', id: cell.id, prompt: String(m.prompt), password: m.password === true, seq: cell.asking });
    return;
  }
  if (m.type === 'display' || m.type === 'finish' || m.type === 'skip') {
    if (!Number.isSafeInteger(m.seq) || m.seq < 0) return dropped(`${m.type} without a sequence number`);
  }
  if (m.type === 'display') {
    if (!isPlainObject(m.data) || (m.metadata !== undefined && !isPlainObject(m.metadata))) return dropped('malformed display');
    m.id = cell ? cell.id : null; // between cells: no cell (as before)
  }
  if (m.type === 'finish' && (!cell || m.key !== cell.key)) return dropped("finish without this cell's key");
  if (m.type === 'complete_reply' || m.type === 'inspect_reply') {
    const r = sup.requests.get(m.id);
    if (!r || r.key !== m.key || `${r.type}_reply` !== m.type) return dropped(`${m.type} that was not asked for`);
  }
  if (m.type === 'hello') {
    if (w !== sup.worker) return;
    w.hello = true;
    sup.quickDeaths = 0;
    if (!sup.readySent) {
      sup.readySent = true;
      sendToKernel({ type: 'ready', language_info: LANGUAGE_INFO, agent: 'node', protocol: 2, binary_files: true });
    }
    while (sup.waiting.length && sup.worker === w && w.hello) dispatch(sup.waiting.shift());
    return;
  }
  if (m.type === 'complete_reply' || m.type === 'inspect_reply') {
    clearTimeout(sup.requests.get(m.id).timer);
    sup.requests.delete(m.id);
    if (m.type === 'complete_reply') {
      const matches = Array.isArray(m.matches) ? m.matches.filter((x) => typeof x === 'string') : [];
      const num = (x) => (Number.isSafeInteger(x) ? x : 0);
      sendToKernel({ type: m.type, id: m.id, matches, cursor_start: num(m.cursor_start), cursor_end: num(m.cursor_end) });
    } else {
      const found = m.found === true && isPlainObject(m.data);
      sendToKernel({ type: m.type, id: m.id, found, data: found ? m.data : {} });
    }
    return;
  }
  if (w !== sup.worker && m.type === 'finish') return; // a killed worker's late word
  if (m.type === 'finish' && cell && m.id === cell.id) {
    // The worker is done with the cell: no more escalation; wait for the markers.
    cell.finished = true;
    for (const t of cell.timers) clearTimeout(t);
  }
  if (m.type === 'display' || m.type === 'finish' || m.type === 'skip') {
    m.arrived = Date.now();
    w.queue.push(m);
    drainQueue(w);
  }
}

// Deliver queued worker messages in order once the output written before them has been sent.
function drainQueue(w) {
  clearTimeout(w.timer);
  w.timer = null;
  while (w.queue.length) {
    const m = w.queue[0];
    const flushed = ['out', 'err'].every((k) => w.ended[k] || w.seen[k] >= m.seq);
    const now = Date.now();
    // Fallback when a marker never comes (user code ended or broke process.stdout): the pipes
    // were quiet for 500 ms, or 5 s passed. Never while we hold the pipes back ourselves.
    const giveUp =
      (!sup.paused && (now - Math.max(m.arrived, w.lastData) > 500 || now - m.arrived > 5000)) || w.heldBytes > 1 << 22;
    if (!flushed && !giveUp) {
      if (!sup.paused) w.timer = setTimeout(() => drainQueue(w), 100);
      return;
    }
    w.queue.shift();
    deliver(w, m);
    w.delivered = Math.max(w.delivered, m.seq);
    releaseHeld(w, false);
  }
}

function deliver(w, m) {
  if (m.type === 'skip') return;
  if (m.type === 'display') {
    sendToKernel({ type: 'display', id: m.id, data: m.data, metadata: m.metadata || {} });
    return;
  }
  // finish: result / error, then done
  w.lastBudget = sup.budget;
  if (!sup.cell || sup.cell.id !== m.id || sup.cell.lost) return;
  if (isPlainObject(m.result)) sendToKernel({ type: 'result', id: m.id, data: m.result, metadata: {} });
  if (isPlainObject(m.error)) {
    const e = m.error;
    const tb = Array.isArray(e.traceback) ? e.traceback.map((l) => (typeof l === 'string' ? l : String(l))) : [];
    sendToKernel({ type: 'error', id: m.id, ename: String(e.ename), evalue: String(e.evalue), traceback: tb });
  }
  finishCell(['ok', 'error', 'interrupted'].includes(m.status) ? m.status : 'error');
}

function finishCell(status) {
  const c = sup.cell;
  if (!c) return;
  for (const t of c.timers) clearTimeout(t);
  sup.cell = null;
  sendToKernel({ type: 'done', id: c.id, status, truncated: sup.budget.truncated });
}

// The worker is gone (or we killed it): report it to the running cell and start a new one.
function lose(w, why, status) {
  if (sup.worker === w) sup.worker = null;
  killGroup(w, 'SIGKILL');
  const c = sup.cell;
  if (c) {
    for (const t of c.timers) clearTimeout(t);
    if (!c.finished) c.lost = true; // else its `finish` is queued and will still be delivered
  }
  if (!c || c.finished) {
    sup.notice = `[sandbox] ${why} after the last cell; ${RESTARTED_MESSAGE}.\n`;
    log(why, 'between cells; restarting the worker');
  }
  // Give the dead worker's pipes a moment to deliver what it printed before it died.
  const started = Date.now();
  const wait = () => {
    if (!(w.ended.out && w.ended.err) && Date.now() - started < 200) {
      setTimeout(wait, 20);
      return;
    }
    flushDead(w);
    if (c && sup.cell === c) {
      const evalue = `${why}; ${RESTARTED_MESSAGE}`;
      sendToKernel({ type: 'error', id: c.id, ename: 'SandboxRestarted', evalue, traceback: [`SandboxRestarted: ${evalue}`] });
      finishCell(status);
    }
  };
  wait();
  startWorker();
}

// A dead worker's leftovers: its displays and output, in order as far as we know it.
function flushDead(w) {
  for (const m of w.queue.splice(0)) {
    releaseHeld(w, false);
    deliver(w, m);
    w.delivered = Math.max(w.delivered, m.seq);
  }
  releaseHeld(w, true);
}

function killGroup(w, signal) {
  try {
    process.kill(-w.pid, signal); // the worker's process group (it is a session leader)
  } catch (_) {
    try {
      process.kill(w.pid, signal);
    } catch (__) {
      /* already gone */
    }
  }
}

// ---- requests the supervisor answers itself -----------------------------------------------

// The `usage_reply` (PROTOCOL.md): this sandbox's own cgroup, read-only, v2 or v1.
function cgroupUsage(id) {
  const number = (file, scale) => {
    let text;
    try {
      text = fs.readFileSync(file, 'latin1').trim();
    } catch (_) {
      return null;
    }
    if (text.startsWith('usage_usec')) text = text.split(/\s+/)[1]; // cpu.stat's first line
    if (!/^\d+$/.test(text)) return null;
    const value = Number(text);
    return value >= 2 ** 62 ? null : value / (scale || 1);
  };
  const root = '/sys/fs/cgroup';
  const reply = { type: 'usage_reply', id: replyId(id) };
  if (fs.existsSync(`${root}/cgroup.controllers`)) {
    Object.assign(reply, {
      cgroup: 2, memory: number(`${root}/memory.current`), memory_limit: number(`${root}/memory.max`),
      memory_peak: number(`${root}/memory.peak`), cpu_seconds: number(`${root}/cpu.stat`, 1e6),
    });
  } else if (fs.existsSync(`${root}/memory`)) {
    const cpu = ['cpuacct', 'cpu,cpuacct', 'cpu'].find((d) => fs.existsSync(`${root}/${d}/cpuacct.usage`)) || 'cpuacct';
    Object.assign(reply, {
      cgroup: 1, memory: number(`${root}/memory/memory.usage_in_bytes`),
      memory_limit: number(`${root}/memory/memory.limit_in_bytes`),
      memory_peak: number(`${root}/memory/memory.max_usage_in_bytes`),
      cpu_seconds: number(`${root}/${cpu}/cpuacct.usage`, 1e9),
    });
  }
  return reply;
}

function replyId(id) {
  return typeof id === 'string' ? id : null;
}

// `file_write` / `file_read` (PROTOCOL.md): answered here, by the supervisor. Regular files
// only, opened non-blocking (a FIFO cannot hang it); paths relative to the working directory
// the supervisor started in.
function fileRequest(m, raw) {
  const reply = { type: 'file_reply', id: replyId(m.id) };
  const offset = m.offset === undefined ? 0 : m.offset;
  if (typeof m.path !== 'string' || !m.path || m.path.includes('\0') || !Number.isSafeInteger(offset) || offset < 0) {
    reply.error = 'malformed request';
    return reply;
  }
  const full = path.resolve(sup.START_DIR, m.path);
  const C = fs.constants;
  let fd = -1;
  try {
    const writing = m.type === 'file_write';
    if (writing) {
      if (offset === 0) fs.mkdirSync(path.dirname(full), { recursive: true });
      fd = fs.openSync(full, C.O_WRONLY | C.O_CREAT | C.O_NONBLOCK | (offset === 0 ? C.O_TRUNC : 0), 0o644);
    } else {
      fd = fs.openSync(full, C.O_RDONLY | C.O_NONBLOCK);
    }
    const st = fs.fstatSync(fd);
    if (!st.isFile()) {
      reply.error = 'not a regular file';
      return reply;
    }
    if (writing) {
      const data = raw || Buffer.from(typeof m.data === 'string' ? m.data : '', 'base64'); // `bin` or `msg`
      let done = 0;
      while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
      reply.size = fs.fstatSync(fd).size;
    } else {
      const length = Number.isSafeInteger(m.length) && m.length > 0 ? Math.min(m.length, 524288) : 524288;
      const buf = Buffer.alloc(Math.max(0, Math.min(length, st.size - offset)));
      let got = 0;
      while (got < buf.length) {
        const n = fs.readSync(fd, buf, got, buf.length - got, offset + got);
        if (n === 0) break;
        got += n;
      }
      reply.size = st.size;
      reply.data = buf.subarray(0, got).toString('base64');
    }
  } catch (e) {
    reply.error = e && e.code ? String(e.message).split(',')[0].replace(/^\w+: /, '') : String((e && e.message) || e);
  } finally {
    if (fd >= 0) fs.closeSync(fd);
  }
  return reply;
}

// `file_list` (PROTOCOL.md): the regular files below the working directory, answered here. Never
// follows a symlink (lstat only), passes over hidden names (on Kubernetes the working directory is
// also HOME), goes at most 32 directories down and stops at max_files files, max_entries names
// looked at or 1 MiB of reply (`truncated` says which).
const LIST_BYTES = 1 << 20;
const utf8Strict = new TextDecoder('utf-8', { fatal: true });
function fileList(m) {
  const bound = (v, most) => (Number.isSafeInteger(v) && v > 0 ? Math.min(v, most) : most);
  const maxFiles = bound(m.max_files, 100000);
  let budget = bound(m.max_entries, 1000000);
  const files = [];
  const skipped = [];
  let size = 0;
  let truncated = false;
  const stack = [[]]; // each a list of raw (Buffer) name components
  while (stack.length && !truncated) {
    const parts = stack.pop();
    const slash = Buffer.from('/');
    const prefix = Buffer.concat(parts.flatMap((p) => [p, slash]));
    const dir = Buffer.concat([Buffer.from(sup.START_DIR), slash, prefix]);
    let names;
    try {
      names = fs.readdirSync(dir, { encoding: 'buffer' });
    } catch (e) {
      continue; // gone, or not readable: nothing of it is listed
    }
    for (const raw of names) {
      if (--budget < 0) {
        truncated = 'entries';
        break;
      }
      if (raw[0] === 0x2e) continue; // a hidden name
      const rel = Buffer.concat([prefix, raw]);
      let st;
      try {
        st = fs.lstatSync(Buffer.concat([dir, raw]), { bigint: true });
      } catch (e) {
        continue; // gone since it was listed
      }
      if (st.isDirectory()) {
        if (parts.length + 1 < 32) stack.push([...parts, raw]);
        continue;
      }
      let name;
      let valid = true;
      try {
        name = utf8Strict.decode(rel);
      } catch (e) {
        name = rel.toString('utf8'); // with U+FFFD: the kernel could not name it back
        valid = false;
      }
      size += Buffer.byteLength(JSON.stringify(name)) + 48; // at least what it adds to the reply
      if (size > LIST_BYTES) {
        truncated = 'bytes';
        break;
      }
      if (!valid) {
        if (skipped.length < 100) skipped.push([name, 'name']);
      } else if (st.isFile()) {
        if (files.length >= maxFiles) {
          truncated = 'files';
          break;
        }
        files.push([name, Number(st.size), `${st.mtimeNs}:${st.ino}`]);
      } else if (skipped.length < 100) {
        skipped.push([name, st.isSymbolicLink() ? 'symlink' : 'special']);
      }
    }
  }
  return { type: 'file_reply', id: replyId(m.id), files, skipped, truncated };
}

// ---- kernel messages ----------------------------------------------------------------------

// Frames from the kernel on stdin: `<kind> <length>\n` and the payload; only `msg` frames mean
// anything to the agent.
function onKernelData(chunk) {
  sup.inbuf = sup.inbuf.length ? Buffer.concat([sup.inbuf, chunk]) : chunk;
  for (;;) {
    if (!sup.need) {
      const nl = sup.inbuf.indexOf(10);
      if (nl < 0 || nl > 32) {
        if (nl > 32 || (nl < 0 && sup.inbuf.length > 32)) {
          log('protocol error: bad frame header from the kernel');
          shutdown(2);
        }
        return;
      }
      const header = sup.inbuf.subarray(0, nl).toString('latin1');
      sup.inbuf = sup.inbuf.subarray(nl + 1);
      const match = /^(msg|out|err|bin) (\d+)$/.exec(header);
      if (!match || Number(match[2]) > MAX_PAYLOAD) {
        log('protocol error: bad frame header from the kernel:', JSON.stringify(header));
        shutdown(2);
        return;
      }
      sup.need = [match[1], Number(match[2])];
    }
    if (sup.inbuf.length < sup.need[1]) return;
    const payload = sup.inbuf.subarray(0, sup.need[1]);
    const kind = sup.need[0];
    sup.inbuf = Buffer.from(sup.inbuf.subarray(sup.need[1]));
    sup.need = null;
    sup.received += 1; // every frame counts (PROTOCOL.md, "Resuming"), the resume itself included
    if (kind === 'bin') {
      // A file_write whose chunk comes as raw bytes after its JSON line.
      const nl = payload.indexOf(10);
      let m = null;
      try {
        m = JSON.parse(payload.subarray(0, nl < 0 ? payload.length : nl).toString('utf8'));
      } catch (e) {
        log('protocol error: bin frame is not JSON:', e.message);
      }
      if (nl >= 0 && m && m.type === 'file_write') sendToKernel(fileRequest(m, payload.subarray(nl + 1)));
      continue;
    }
    if (kind !== 'msg') continue;
    let m;
    try {
      m = JSON.parse(payload.toString('utf8'));
    } catch (e) {
      log('protocol error: message is not JSON:', e.message);
      continue;
    }
    if (m && typeof m === 'object' && typeof m.type === 'string') onKernelMessage(m);
  }
}

function onKernelMessage(m) {
  switch (m.type) {
    case 'interrupt':
      interrupt();
      return;
    case 'input_reply': {
      const cell = sup.cell;
      if (cell && cell.asking && m.id === cell.id && m.seq === cell.asking) {
        answerInput(cell, typeof m.error === 'string' ? { error: m.error } : { value: String(m.value == null ? '' : m.value) });
      }
      return;
    }
    case 'shutdown':
      shutdown(0);
      return;
    case 'resume':
      answerResume(m);
      return;
    case 'usage':
      sendToKernel(cgroupUsage(m.id));
      return;
    case 'file_write':
    case 'file_read':
      sendToKernel(fileRequest(m));
      return;
    case 'file_list':
      sendToKernel(fileList(m));
      return;
    case 'is_complete':
      sendToKernel({ type: 'is_complete_reply', id: m.id, ...isComplete(String(m.code || '')) });
      return;
    case 'execute':
    case 'complete':
    case 'inspect':
      if (!sup.worker || !sup.worker.hello) sup.waiting.push(m);
      else dispatch(m);
      return;
    default:
      log('ignoring unknown message type', JSON.stringify(m.type));
  }
}

// Hand an execute / complete / inspect to the current worker (which has said hello).
function dispatch(m) {
  const w = sup.worker;
  if (m.type === 'execute') {
    const cell = { id: m.id, interrupting: false, timers: [], lost: false, key: crypto.randomBytes(16).toString('hex'), inputs: 0, asking: 0 };
    sup.cell = cell;
    cell.stdin = m.allow_stdin === true && inputChannel() !== null;
    sup.noted = false;
    sup.budget = { limit: Math.max(0, Number(m.output_limit) || 0), sent: 0, truncated: 0 };
    if (sup.notice) {
      forward('err', Buffer.from(sup.notice, 'utf8'));
      sup.notice = null;
    }
    const number = Number.isSafeInteger(m.cell) && m.cell > 0 ? m.cell : undefined; // names the cell in tracebacks
    const inputPath = cell.stdin ? sup.inputPath : null;
    w.proc.send({ type: 'execute', id: m.id, code: String(m.code == null ? '' : m.code), cell: number, key: cell.key, input: inputPath }, () => {});
    return;
  }
  // complete / inspect: the worker answers unless it is stuck; never leave the kernel waiting.
  const empty =
    m.type === 'complete'
      ? { type: 'complete_reply', id: m.id, matches: [], cursor_start: m.cursor_pos || 0, cursor_end: m.cursor_pos || 0 }
      : { type: 'inspect_reply', id: m.id, found: false, data: {} };
  const key = crypto.randomBytes(16).toString('hex');
  sup.requests.set(m.id, {
    type: m.type,
    key,
    timer: setTimeout(() => {
      sup.requests.delete(m.id);
      sendToKernel(empty);
    }, 3000),
  });
  w.proc.send(
    { type: m.type, id: m.id, code: String(m.code || ''), cursor_pos: Number(m.cursor_pos) || 0, detail_level: m.detail_level || 0, key },
    () => {},
  );
}

// input() in the worker (see "input()" there) waits for its answer by reading a FIFO, since
// the worker's event loop (and so its IPC channel) stands still while it waits. Made the first
// time a cell may ask (mkfifo), in a private directory of ours; one JSON line per answer.
function inputChannel() {
  if (sup.inputFd >= 0) return sup.inputPath;
  try {
    const dir = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', '.sknode-input-'));
    const p = path.join(dir, 'answers');
    childProcess.execFileSync('mkfifo', ['-m', '600', '--', p], { stdio: 'ignore' });
    sup.inputFd = fs.openSync(p, fs.constants.O_RDWR); // a FIFO opened read-write never blocks
    sup.inputPath = p;
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  } catch (e) {
    log('no input channel (input() will be refused):', e && e.message);
    return null;
  }
  return sup.inputPath;
}

function answerInput(c, answer) {
  c.asking = 0;
  if (sup.inputFd < 0) return;
  try {
    fs.writeSync(sup.inputFd, `${JSON.stringify({ id: c.id, ...answer })}\n`);
  } catch (e) {
    log('answering input() failed:', e && e.message);
  }
}

function interrupt() {
  const c = sup.cell;
  if (!c || c.interrupting || c.lost || c.finished) return; // nothing runs: ignored
  c.interrupting = true;
  // Waiting in input(): the answer makes it raise the interrupt. No SIGINT then: it could
  // arrive after the cell has ended and stop the next one.
  const waiting = c.asking;
  if (waiting) answerInput(c, { interrupt: true });
  const w = sup.worker;
  if (!w) return; // the cell is already being reported as lost
  try {
    if (!waiting) process.kill(w.pid, 'SIGINT');
  } catch (_) {
    /* it is dying anyway; the exit handler reports */
  }
  c.timers.push(
    setTimeout(() => {
      if (sup.cell === c && sup.worker === w) killGroup(w, 'SIGINT'); // reach child processes the cell waits for
    }, 500),
  );
  c.timers.push(
    setTimeout(() => {
      if (sup.cell === c && sup.worker === w) lose(w, 'the cell did not stop when interrupted', 'interrupted');
    }, 1500),
  );
}

function shutdown(code) {
  if (sup.exiting) return;
  sup.exiting = true;
  for (const w of sup.allWorkers) killGroup(w, 'SIGKILL');
  // Let what we already wrote reach the kernel, but do not hang on a reader that went away.
  sup.protocolOut.write('', () => process.exit(code));
  setTimeout(() => process.exit(code), 200).unref();
}

// `incomplete` when the code ends inside an unclosed bracket, string template or block,
// `invalid` for other syntax errors. Also accepts top-level await.
function isComplete(code) {
  if (!code.trim()) return { status: 'complete', indent: '' };
  const verdict = (src) => {
    for (let closers = 0; closers <= 10; closers++) {
      try {
        new vm.Script(src + '\n)'.repeat(closers), { filename: 'is_complete' }); // compiles only, runs nothing
        return closers ? 'incomplete' : 'complete';
      } catch (e) {
        const msg = String(e && e.message);
        if (/Unexpected end of input|Unterminated template/.test(msg)) return 'incomplete';
        // V8 says this both for `f(1, 2` (unclosed) and `f(1 2)` (wrong): add `)`s and see.
        if (!/missing \) after argument list/.test(msg)) return 'invalid';
      }
    }
    return 'invalid';
  };
  let status = verdict(code);
  // Top-level await is fine in a cell: judge the code with the `await` keywords blanked out.
  if (status === 'invalid' && /\bawait\b/.test(code)) status = verdict(code.replace(/\bawait\b/g, '     '));
  // An unclosed block comment also means "keep typing".
  if (status === 'invalid' && /\/\*(?![\s\S]*\*\/)[\s\S]*$/.test(code)) status = 'incomplete';
  return { status, indent: status === 'incomplete' ? '  ' : '' };
}

// ===========================================================================================
// Worker: runs the cells. fd 1/2 are pipes read by the supervisor; fd 3 is IPC.
// ===========================================================================================
//
// The built-ins the worker relies on are captured when this file loads, before user code can
// replace them (cells run in this realm and may even declare `let process` or `let globalThis`).
const proc = process;
const G = globalThis;
const inspect = util.inspect;
const isNativeError = util.types.isNativeError;
const PromiseThen = Promise.prototype.then;
const getOwnPropertyNames = Object.getOwnPropertyNames;
const getPrototypeOf = Object.getPrototypeOf;
const fsWriteSync = fs.writeSync;
const fsCloseSync = fs.closeSync;
const fsClose = fs.close;
const fsWrite = fs.write;
const CANCEL = Object.freeze({ toString: () => 'cell interrupted' }); // thrown into abandoned cells
const waitCell = new Int32Array(new SharedArrayBuffer(4)); // for Atomics.wait in rawWrite

// Its functions share one state object, `wrk`, made by worker() (null in the other roles).
let wrk = null;

function worker() {
  wrk = {
    ipcSend: process.send.bind(process),
    acorn: null, // Node's own parser (see "STATE ACROSS CELLS" at the top)
    closedStdio: new Set(), // fds 0-2 that user code closed in this cell (see keepStdioOpen)
    markerPrefix: null,
    seq: 0,
    gen: 0, // cell generation, used by the await-resume check
    cellNo: 0,
    current: null, // the running cell: {id, gen, async, done, key, input}
    cellLines: new Map(), // cell number -> its number of lines (for cleanStack)
    // input(): the supervisor's FIFO, opened for reading, and what was read of it but not used.
    inputFd: -1,
    inputFile: null,
    inputBuffer: '',
    userRequire: null, // require() of the cells (see defineGlobals)
  };
  syncWrite(process.stdout, 1);
  syncWrite(process.stderr, 2);
  keepStdioOpen();

  try {
    wrk.acorn = require('internal/deps/acorn/acorn/dist/acorn');
  } catch (_) {
    wrk.acorn = null; // no --expose-internals: cells run unrewritten (see prepareFallback)
  }

  // SIGINT outside runInThisContext (breakOnSigint handles the synchronous part itself): end a
  // cell that is waiting for a promise. Also keeps SIGINT from killing the worker.
  process.on('SIGINT', () => {
    const c = wrk.current;
    if (c && c.async && !c.done) finish(c, 'interrupted');
  });

  // Errors from timers, callbacks and promises between (or during) cells: report, never die.
  process.on('uncaughtException', (e) => {
    if (e === CANCEL) return;
    try {
      writeErr(`Uncaught ${formatError(e).traceback.join('\n')}\n`);
    } catch (_) {
      /* ignore */
    }
  });
  process.on('unhandledRejection', (e) => {
    if (e === CANCEL) return;
    try {
      writeErr(`Unhandled promise rejection: ${formatError(e).traceback.join('\n')}\n`);
    } catch (_) {
      /* ignore */
    }
  });
  proc.on('disconnect', () => proc.exit(0)); // the supervisor is gone

  defineGlobals();
  process.on('message', onControlMessage);
}

// ---- fd 1 and 2 ---------------------------------------------------------------------------
// process.stdout/stderr write SYNCHRONOUSLY, straight to fd 1/2 with fs.writeSync.
// Node's own pipe streams queue in memory and complete writes on the event loop; a cell stopped
// by breakOnSigint can be terminated in the middle of that stream machinery, leaving the
// stream "writing" forever (no output for the rest of the session). Synchronous writes keep no
// state, make `while (true) console.log(...)` wait for the supervisor instead of queueing
// gigabytes, and lose nothing when user code calls process.exit(). The fds are made blocking
// (they are shared with subprocesses, which then never see EAGAIN either).
function rawWrite(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fsWriteSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e && e.code === 'EAGAIN') {
        Atomics.wait(waitCell, 0, 0, 2); // still non-blocking: wait for the reader
        continue;
      }
      return e; // EPIPE, EBADF (user code closed the fd): the bytes are dropped
    }
  }
  return null;
}

function toBuffer(chunk, encoding) {
  if (typeof chunk === 'string') return Buffer.from(chunk, Buffer.isEncoding(encoding) ? encoding : 'utf8');
  if (ArrayBuffer.isView(chunk)) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  return Buffer.from(String(chunk));
}

function ebadf(fd) {
  return Object.assign(new Error(`EBADF: bad file descriptor, write`), { errno: -9, code: 'EBADF', syscall: 'write', fd });
}

function syncWrite(stream, fd) {
  try {
    if (stream._handle && typeof stream._handle.setBlocking === 'function') stream._handle.setBlocking(true);
  } catch (_) {
    /* rawWrite copes with EAGAIN */
  }
  stream.on('error', () => {}); // e.g. user code ending the stream: never crash the worker
  stream.write = function write(chunk, encoding, callback) {
    if (typeof encoding === 'function') {
      callback = encoding;
      encoding = undefined;
    }
    const err = wrk.closedStdio.has(fd) ? ebadf(fd) : rawWrite(fd, toBuffer(chunk, encoding));
    if (typeof callback === 'function') proc.nextTick(callback, err);
    return true;
  };
  // `process.stdout.end()` would shut the socket down for good: let it end the stream object
  // but never the fd, so later cells (and markers) can still write.
  const end = stream.end;
  stream._final = (callback) => callback();
  stream.end = function (chunk, encoding, callback) {
    if (typeof chunk === 'function') {
      callback = chunk;
      chunk = undefined;
    } else if (typeof encoding === 'function') {
      callback = encoding;
      encoding = undefined;
    }
    if (chunk !== undefined && chunk !== null) this.write(chunk, encoding);
    return end.call(this, callback);
  };
}

// Closing fd 0/1/2 from JavaScript (fs.closeSync(1)) must not lose the streams for the rest of
// the session, and Node cannot dup2() them back (they are sockets, which /proc/self/fd cannot
// re-open either). So fs.close/closeSync leave fd 0-2 open and only mark them closed for the
// rest of the cell: writes to a closed one then fail with EBADF, as they would after a real
// close, and the next cell starts with all three open again (repairStdio).
function keepStdioOpen() {
  fs.closeSync = function closeSync(fd) {
    if (fd === 0 || fd === 1 || fd === 2) {
      wrk.closedStdio.add(fd);
      return undefined;
    }
    return fsCloseSync.apply(this, arguments);
  };
  fs.close = function close(fd, callback) {
    if (fd === 0 || fd === 1 || fd === 2) {
      wrk.closedStdio.add(fd);
      if (typeof callback === 'function') proc.nextTick(callback, null);
      return undefined;
    }
    return fsClose.apply(this, arguments);
  };
  fs.writeSync = function writeSync(fd) {
    if (wrk.closedStdio.has(fd)) throw ebadf(fd);
    return fsWriteSync.apply(this, arguments);
  };
  fs.write = function write(fd) {
    const callback = arguments[arguments.length - 1];
    if (wrk.closedStdio.has(fd) && typeof callback === 'function') return proc.nextTick(callback, ebadf(fd));
    return fsWrite.apply(this, arguments);
  };
}

function repairStdio() {
  wrk.closedStdio.clear();
}

function writeErr(text) {
  return rawWrite(2, Buffer.from(text, 'utf8'));
}

// ---- messages to the supervisor -----------------------------------------------------------

function sendToSupervisor(m) {
  try {
    wrk.ipcSend(m);
  } catch (e) {
    // Not serialisable (a BigInt in an application/json display, say). Every marker must be
    // followed by its message, or the supervisor would hold the output after it back.
    try {
      if (m.type === 'display') {
        wrk.ipcSend({ ...m, data: { 'text/plain': `[display data could not be sent: ${safeString(e && e.message)}]` } });
      } else if (m.seq !== undefined) {
        wrk.ipcSend({ type: 'skip', seq: m.seq });
      }
    } catch (_) {
      /* the supervisor is gone; the disconnect handler exits */
    }
  }
}

// Write a marker through both pipes (after everything written so far) and return its number.
function sync() {
  wrk.seq += 1;
  if (!wrk.markerPrefix) return wrk.seq;
  const marker = Buffer.from(`${wrk.markerPrefix}${wrk.seq.toString(16).padStart(8, '0')}\x03`, 'latin1');
  rawWrite(1, marker); // if fd 1/2 are gone, the supervisor falls back to a timeout
  rawWrite(2, marker);
  return wrk.seq;
}

// The supervisor's messages on the control channel.
function onControlMessage(m) {
  if (!m || typeof m !== 'object') return;
  switch (m.type) {
    case 'init':
      wrk.markerPrefix = m.prefix;
      sendToSupervisor({ type: 'hello' });
      break;
    case 'execute':
      runCell(m);
      break;
    case 'complete': {
      let r;
      try {
        r = complete(m.code, m.cursor_pos);
      } catch (_) {
        r = { matches: [], cursor_start: m.cursor_pos, cursor_end: m.cursor_pos };
      }
      sendToSupervisor({ type: 'complete_reply', id: m.id, ...r, key: m.key });
      break;
    }
    case 'inspect': {
      let r;
      try {
        r = inspectAt(m.code, m.cursor_pos, m.detail_level);
      } catch (_) {
        r = { found: false, data: {} };
      }
      sendToSupervisor({ type: 'inspect_reply', id: m.id, ...r, key: m.key });
      break;
    }
    default:
      break;
  }
}

// ---- value rendering ----------------------------------------------------------------------

function show(value, depth) {
  try {
    return inspect(value, { depth: depth == null ? 2 : depth, maxArrayLength: 200, maxStringLength: 100000, breakLength: 100 });
  } catch (e) {
    return `[value that cannot be shown: ${safeString(e)}]`;
  }
}

function safeString(x) {
  try {
    return String(x);
  } catch (_) {
    return '[object]';
  }
}

function isMimeBundle(v) {
  if (!v || typeof v !== 'object' || Array.isArray(v)) return false;
  const keys = Object.keys(v);
  return keys.length > 0 && keys.every((k) => /^[\w.+-]+\/[\w.+-]+$/.test(k));
}

function bundle(value, isResult) {
  if (!isResult && isMimeBundle(value)) {
    const data = {};
    for (const k of Object.keys(value)) {
      const v = value[k];
      data[k] = typeof v === 'string' || /json$/.test(k) ? v : safeString(v);
    }
    return data;
  }
  const data = {};
  if (value && (typeof value === 'object' || typeof value === 'function')) {
    try {
      if (typeof value._toHtml === 'function') data['text/html'] = String(value._toHtml());
    } catch (_) {
      /* fall back to plain text */
    }
  }
  data['text/plain'] = !isResult && typeof value === 'string' ? value : show(value);
  return data;
}

function display(...values) {
  for (const value of values) {
    const data = bundle(value, false);
    const id = wrk.current ? wrk.current.id : null;
    sendToSupervisor({ type: 'display', id, data, metadata: {}, seq: sync() });
  }
}

// ---- input() ------------------------------------------------------------------------------
// input(prompt) and getpass(prompt): synchronous, like Python's, so a cell reads a line where
// it is (no callback, no await). The frontend shows its input box (input_request); the answer
// comes back through the supervisor's FIFO (the event loop, and so the IPC channel, stands
// still meanwhile). End of input (Ctrl-D, "\u0004") gives null. A frontend that does not allow
// stdin gets StdinNotImplementedError, as in Python; an interrupt ends the wait.
function stdinError(message) {
  const e = new Error(message);
  e.name = 'StdinNotImplementedError';
  return e;
}

function readAnswer(c) {
  for (;;) {
    const nl = wrk.inputBuffer.indexOf('\n');
    if (nl >= 0) {
      const line = wrk.inputBuffer.slice(0, nl);
      wrk.inputBuffer = wrk.inputBuffer.slice(nl + 1);
      let a;
      try {
        a = JSON.parse(line);
      } catch (_) {
        continue;
      }
      if (isPlainObject(a) && a.id === c.id) return a; // else: an answer to an earlier cell
      continue;
    }
    const buf = Buffer.alloc(65536);
    const n = fs.readSync(wrk.inputFd, buf, 0, buf.length, null);
    if (n === 0) throw stdinError('input() failed: the agent closed its input channel');
    wrk.inputBuffer += buf.subarray(0, n).toString('utf8');
  }
}

function ask(prompt, password) {
  const c = wrk.current;
  if (!c || !c.input) {
    throw stdinError('input() is not supported here: this frontend does not answer input requests (allow_stdin is false)');
  }
  if (wrk.inputFile !== c.input) {
    if (wrk.inputFd >= 0) fs.closeSync(wrk.inputFd);
    wrk.inputFd = fs.openSync(c.input, 'r'); // close-on-exec: programs the cell starts do not get it
    wrk.inputFile = c.input;
  }
  wrk.ipcSend({ type: 'input_request', key: c.key, prompt: prompt === undefined ? '' : String(prompt), password });
  const a = readAnswer(c);
  if (a.interrupt) throw CANCEL;
  if (typeof a.error === 'string') throw stdinError(a.error);
  const value = typeof a.value === 'string' ? a.value : '';
  return value === '\u0004' ? null : value;
}

function input(prompt = '') {
  return ask(prompt, false);
}

function getpass(prompt = 'Password: ') {
  return ask(prompt, true);
}

// ---- errors -------------------------------------------------------------------------------

function isInterrupt(e) {
  return e === CANCEL || (isNativeError(e) && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED');
}

function cleanStack(stack) {
  const lines = String(stack).split('\n');
  // Everything from the first frame in this file or in node:vm downwards is agent plumbing.
  let end = lines.findIndex((l) => /^\s+at /.test(l) && (l.includes(__filename) || l.includes('node:vm:')));
  if (end < 0) end = lines.length;
  while (end > 1 && /^\s+at .*node:internal\//.test(lines[end - 1])) end--;
  // Drop frames that point past the end of their cell: the `})()` closing an async wrapper.
  const kept = lines.slice(0, end).filter((l) => {
    const m = /^\s+at .*<cell (\d+)>:(\d+):\d+\)?$/.exec(l);
    return !m || !wrk.cellLines.has(Number(m[1])) || Number(m[2]) <= wrk.cellLines.get(Number(m[1]));
  });
  while (kept.length > 1 && !kept[kept.length - 1].trim()) kept.pop();
  return kept;
}

function formatError(e) {
  let ename;
  let evalue;
  let stack;
  if (isNativeError(e) || (e && typeof e === 'object' && typeof e.stack === 'string' && 'message' in e)) {
    try {
      ename = typeof e.name === 'string' && e.name ? e.name : 'Error';
      evalue = safeString(e.message);
      stack = typeof e.stack === 'string' && e.stack ? e.stack : `${ename}: ${evalue}`;
    } catch (_) {
      ename = 'Error';
      evalue = '[error that cannot be shown]';
      stack = `${ename}: ${evalue}`;
    }
  } else {
    ename = 'Uncaught';
    evalue = show(e);
    stack = `Uncaught ${evalue}`;
  }
  return { ename, evalue, traceback: cleanStack(stack) };
}

// ---- cell rewriting -----------------------------------------------------------------------
const IDENT = /^[\p{ID_Start}$_][\p{ID_Continue}$\u200c\u200d]*$/u;
const PARSE_OPTIONS = { ecmaVersion: 'latest', sourceType: 'script', allowAwaitOutsideFunction: true, allowHashBang: false };

// Names bound by a declaration pattern.
function patternNames(p, out) {
  if (!p) return out;
  switch (p.type) {
    case 'Identifier':
      out.push(p.name);
      break;
    case 'ObjectPattern':
      for (const prop of p.properties) patternNames(prop.type === 'RestElement' ? prop.argument : prop.value, out);
      break;
    case 'ArrayPattern':
      for (const el of p.elements) patternNames(el, out);
      break;
    case 'AssignmentPattern':
      patternNames(p.left, out);
      break;
    case 'RestElement':
      patternNames(p.argument, out);
      break;
    default:
      break;
  }
  return out;
}

function walkAll(node, visit) {
  if (!node || typeof node.type !== 'string') return;
  visit(node);
  for (const key of Object.keys(node)) {
    const v = node[key];
    if (Array.isArray(v)) for (const c of v) walkAll(c, visit);
    else if (v && typeof v === 'object' && typeof v.type === 'string') walkAll(v, visit);
  }
}

// Top-level awaits: AwaitExpressions and `for await` not inside a nested function.
function findAwaits(node, found) {
  if (!node || typeof node.type !== 'string') return found;
  if (/Function/.test(node.type)) return found;
  if (node.type === 'AwaitExpression') found.awaits.push(node);
  if (node.type === 'ForOfStatement' && node.await) found.forAwait = true;
  for (const key of Object.keys(node)) {
    const v = node[key];
    if (Array.isArray(v)) for (const c of v) findAwaits(c, found);
    else if (v && typeof v === 'object' && typeof v.type === 'string') findAwaits(v, found);
  }
  return found;
}

// `import x from 'm'` is not allowed in a script: turn static imports into `await import()`
// (line numbers kept). Only tried when the cell does not parse as a script.
function rewriteImports(code) {
  const acorn = wrk.acorn;
  try {
    acorn.parse(code, PARSE_OPTIONS);
    return code;
  } catch (_) {
    /* maybe module syntax */
  }
  let ast;
  try {
    ast = acorn.parse(code, { ...PARSE_OPTIONS, sourceType: 'module' });
  } catch (_) {
    return code;
  }
  const imports = ast.body.filter((n) => n.type === 'ImportDeclaration');
  let out = '';
  let pos = 0;
  for (const n of imports) {
    const ns = `(await ${INTERNAL}Import(${JSON.stringify(n.source.value)}))`;
    const parts = n.specifiers.map((sp) => {
      if (sp.type === 'ImportDefaultSpecifier') return `${sp.local.name} = ${ns}.default`;
      if (sp.type === 'ImportNamespaceSpecifier') return `${sp.local.name} = ${ns}`;
      const name = sp.imported.type === 'Identifier' ? sp.imported.name : sp.imported.value;
      return `${sp.local.name} = ${ns}[${JSON.stringify(name)}]`;
    });
    const text = parts.length ? `const ${parts.join(', ')};` : `${ns};`;
    out += code.slice(pos, n.start) + text + '\n'.repeat(code.slice(n.start, n.end).split('\n').length - 1);
    pos = n.end;
  }
  return out + code.slice(pos);
}

// The cell rewritten for generation g (see "STATE ACROSS CELLS" at the top). Returns
// {source, isAsync, hasValue, lineOffset}. Throws if acorn cannot parse the code (the caller
// then compiles the original code so V8 reports the syntax error).
function prepare(cellCode, g) {
  const acorn = wrk.acorn;
  const code = rewriteImports(cellCode);
  let src = code;
  let lineOffset = 0;
  // Like the REPL: a cell that is just `{a: 1}` is an object literal, not a block.
  if (/^\s*\{/.test(code) && !/;\s*$/.test(code)) {
    try {
      acorn.parse(`(\n${code}\n)`, PARSE_OPTIONS);
      src = `(\n${code}\n)`;
      lineOffset = -1;
    } catch (_) {
      /* a block after all */
    }
  }
  const ast = acorn.parse(src, PARSE_OPTIONS);
  const { awaits, forAwait } = findAwaits(ast, { awaits: [], forAwait: false });
  const isAsync = awaits.length > 0 || forAwait;
  const body = ast.body;
  let last = body.length - 1;
  while (last >= 0 && body[last].type === 'EmptyStatement') last--;
  const lastExpr = last >= 0 && body[last].type === 'ExpressionStatement' ? body[last].expression : null;

  // Edits are insertions (start === end) or replacements, applied in one pass. At one position,
  // closing text of an inner node goes before closing text of an outer one, and opening text of
  // an outer node before that of an inner one; edits are generated outer-first.
  const edits = [];
  let order = 0;
  const open = (at, text) => edits.push({ start: at, end: at, text, close: false, order: order++ });
  const close = (at, text) => edits.push({ start: at, end: at, text, close: true, order: order++ });
  const replace = (start, end, text) => edits.push({ start, end, text, close: false, order: order++ });
  const hoisted = [];

  if (isAsync && lastExpr) {
    open(lastExpr.start, 'return { value: (');
    close(lastExpr.end, ') }');
  }
  for (const node of body) {
    if (node.type === 'VariableDeclaration' && (node.kind === 'let' || node.kind === 'const' || node.kind === 'var')) {
      if (!isAsync) {
        if (node.kind !== 'var') replace(node.start, node.start + node.kind.length, 'var');
        for (const d of node.declarations) if (!d.init && node.kind === 'let') close(d.end, ' = undefined');
      } else {
        for (const d of node.declarations) patternNames(d.id, hoisted);
        replace(node.start, node.declarations[0].start, 'void (');
        close(node.declarations[node.declarations.length - 1].end, ');'); // outer before inner
        for (const d of node.declarations) {
          open(d.start, '(');
          close(d.end, !d.init && node.kind !== 'var' ? ' = undefined)' : ')');
        }
      }
    } else if (node.type === 'ClassDeclaration' && node.id) {
      if (isAsync) hoisted.push(node.id.name);
      open(node.start, isAsync ? `${node.id.name} = ` : `var ${node.id.name} = `);
      close(node.end, ';');
    } else if (node.type === 'FunctionDeclaration' && isAsync && node.id) {
      hoisted.push(node.id.name);
      open(node.start, `this.${node.id.name} = ${node.id.name}; `);
    }
  }
  walkAll(ast, (n) => {
    if (n.type === 'ImportExpression') replace(n.start, n.start + 'import'.length, `${INTERNAL}Import`);
  });
  if (isAsync) {
    for (const a of awaits) {
      open(a.start, `${INTERNAL}Resume(${g}, `);
      close(a.end, ')');
    }
  }
  edits.sort((a, b) => {
    if (a.start !== b.start) return a.start - b.start;
    if (a.close !== b.close) return a.close ? -1 : 1;
    return a.close ? b.order - a.order : a.order - b.order;
  });
  let outText = '';
  let pos = 0;
  for (const e of edits) {
    outText += src.slice(pos, e.start) + e.text;
    pos = Math.max(pos, e.end);
  }
  outText += src.slice(pos);
  if (!isAsync) return { source: outText, isAsync: false, hasValue: !!lastExpr, lineOffset };
  const names = [...new Set(hoisted)];
  // The prefix sits on its own line; lineOffset keeps stack line numbers = cell line numbers.
  const prefix = `${names.length ? `var ${names.join(', ')}; ` : ''}(async () => {\n`;
  return { source: `${prefix}${outText}\n})()`, isAsync: true, hasValue: true, lineOffset: lineOffset - 1 };
}

// Without acorn: run the code as is (let/const still persist, but cannot be redeclared).
function prepareFallback(code) {
  if (/\bawait\b/.test(code)) {
    try {
      new vm.Script(code);
    } catch (e) {
      if (/await is only valid/.test(String(e && e.message))) {
        return { source: `(async () => {\n${code}\n})()`, isAsync: true, hasValue: false, lineOffset: -1 };
      }
    }
  }
  return { source: code, isAsync: false, hasValue: true, lineOffset: 0 };
}

// import() from a vm.Script needs an experimental loader hook (and does not exist in older
// Nodes); cells call this instead. Relative paths and bare names resolve from the cwd.
const userImport = (specifier) => {
  const spec = String(specifier);
  let target = spec;
  if (/^\.{0,2}\//.test(spec)) {
    target = url.pathToFileURL(path.resolve(proc.cwd(), spec)).href;
  } else if (!/^[a-z][a-z0-9+.-]*:/i.test(spec) && !(Module.isBuiltin ? Module.isBuiltin(spec) : Module.builtinModules.includes(spec))) {
    try {
      target = url.pathToFileURL(wrk.userRequire.resolve(spec)).href;
    } catch (_) {
      /* let import() report it */
    }
  }
  return import(target);
};

// ---- running a cell -----------------------------------------------------------------------

function finish(c, status, value, err) {
  if (c.done) return;
  c.done = true;
  if (wrk.current === c) wrk.current = null;
  const m = { type: 'finish', id: c.id, status, key: c.key };
  if (status === 'ok' && value !== undefined) m.result = bundle(value, true);
  if (status === 'error') m.error = formatError(err);
  if (status === 'interrupted') {
    m.error = { ename: 'KeyboardInterrupt', evalue: 'Interrupted', traceback: ['KeyboardInterrupt: the cell was interrupted'] };
  }
  m.seq = sync(); // after the cell's output, before the message
  sendToSupervisor(m);
}

function runCell(m) {
  const gen = ++wrk.gen;
  // Named after the frontend's execution count when the kernel sends it (magics and silent
  // requests never reach the agent, so its own count would drift from the prompt's [N]).
  const cellNo = Number.isSafeInteger(m.cell) && m.cell > 0 ? m.cell : wrk.cellNo + 1;
  wrk.cellNo = cellNo;
  const c = { id: m.id, gen, async: false, done: false, key: m.key, input: typeof m.input === 'string' ? m.input : null };
  wrk.current = c;
  repairStdio();
  const code = m.code;
  const filename = `<cell ${cellNo}>`;
  const cellLines = wrk.cellLines;
  cellLines.delete(cellNo);
  cellLines.set(cellNo, code.split('\n').length);
  if (cellLines.size > 1000) cellLines.delete(cellLines.keys().next().value); // the oldest
  let prepared;
  try {
    prepared = wrk.acorn ? prepare(code, gen) : prepareFallback(code);
  } catch (_) {
    prepared = { source: code, isAsync: false, hasValue: true, lineOffset: 0 }; // V8 reports the error
  }
  let script;
  try {
    script = new vm.Script(prepared.source, { filename, lineOffset: prepared.lineOffset });
  } catch (e) {
    finish(c, 'error', undefined, e);
    return;
  }
  let value;
  try {
    value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  } catch (e) {
    finish(c, isInterrupt(e) ? 'interrupted' : 'error', undefined, e);
    return;
  }
  if (!prepared.isAsync) {
    finish(c, 'ok', prepared.hasValue ? value : undefined);
    return;
  }
  c.async = true;
  PromiseThen.call(
    value,
    (r) => finish(c, 'ok', prepared.hasValue && r && typeof r === 'object' ? r.value : undefined),
    (e) => {
      if (e === CANCEL) return; // abandoned after an interrupt, already reported
      finish(c, isInterrupt(e) ? 'interrupted' : 'error', undefined, e);
    },
  );
}

// Called by every rewritten top-level `await` when it resumes: an abandoned cell stops here.
function afterAwait(g, v) {
  if (!wrk.current || wrk.current.gen !== g) throw CANCEL;
  return v;
}

// ---- completion and inspection ------------------------------------------------------------
const ID_TAIL = /[\p{ID_Start}$_][\p{ID_Continue}$\u200c\u200d]*$/u;
const CHAIN = '[\\p{ID_Start}$_][\\p{ID_Continue}$\\u200c\\u200d]*(?:\\s*\\??\\.\\s*[\\p{ID_Start}$_][\\p{ID_Continue}$\\u200c\\u200d]*)*';
const KEYWORDS = (
  'await break case catch class const continue debugger default delete do else export extends false finally for ' +
  'function if import in instanceof let new null return static super switch this throw true try typeof undefined ' +
  'var void while with yield async of'
).split(' ');

// Code point offset -> UTF-16 index.
function cpIndex(s, cp) {
  let i = 0;
  for (let n = 0; n < cp && i < s.length; n++) i += s.codePointAt(i) > 0xffff ? 2 : 1;
  return i;
}

function cpLength(s) {
  return [...s].length;
}

// Follow a.b.c from the global object without calling anything but getters.
function resolve(names) {
  let obj = G;
  for (const name of names) {
    if (obj === null || obj === undefined) return { ok: false };
    try {
      if (!(name in Object(obj))) return { ok: false };
      obj = obj[name];
    } catch (_) {
      return { ok: false };
    }
  }
  return { ok: true, value: obj };
}

function propertyNames(value) {
  const names = new Set();
  let o = value === null || value === undefined ? null : Object(value);
  for (let depth = 0; o && depth < 20; depth++) {
    try {
      for (const n of getOwnPropertyNames(o)) names.add(n);
      o = getPrototypeOf(o);
    } catch (_) {
      break;
    }
  }
  return names;
}

function complete(code, cursor) {
  const before = code.slice(0, cpIndex(code, cursor));
  const partialMatch = ID_TAIL.exec(before);
  const partial = partialMatch ? partialMatch[0] : '';
  const rest = before.slice(0, before.length - partial.length);
  let candidates;
  const dot = /\??\.\s*$/.exec(rest);
  if (dot) {
    const chainMatch = new RegExp(`(${CHAIN})\\s*$`, 'u').exec(rest.slice(0, dot.index));
    const charBefore = chainMatch ? rest.slice(0, dot.index - chainMatch[0].length).slice(-1) : '';
    if (!chainMatch || /[.\])'"`\p{ID_Continue}]/u.test(charBefore)) {
      candidates = new Set();
    } else {
      const r = resolve(chainMatch[1].split(/\s*\??\.\s*/));
      candidates = r.ok ? propertyNames(r.value) : new Set();
    }
  } else {
    if (/\d$/.test(rest) && !partial) candidates = new Set();
    else candidates = new Set([...propertyNames(G), ...KEYWORDS]);
  }
  const matches = [...candidates]
    .filter((n) => n.startsWith(partial) && IDENT.test(n) && !n.startsWith(INTERNAL))
    .sort((a, b) => (a.startsWith('_') - b.startsWith('_')) || (a < b ? -1 : a > b ? 1 : 0));
  return { matches: matches.slice(0, 1000), cursor_start: cursor - cpLength(partial), cursor_end: cursor };
}

function signature(fn) {
  let text = '';
  try {
    text = Function.prototype.toString.call(fn);
  } catch (_) {
    /* proxies */
  }
  if (/^class\b/.test(text)) return text.slice(0, text.indexOf('{')).trim();
  if (/\{\s*\[native code\]\s*\}$/.test(text)) return `${fn.name || 'anonymous'}(${fn.length} argument${fn.length === 1 ? '' : 's'}) [native]`;
  const arrow = text.indexOf('=>');
  const brace = text.indexOf('{');
  const cut = arrow >= 0 && (brace < 0 || arrow < brace) ? arrow + 2 : brace;
  return (cut >= 0 ? text.slice(0, cut) : text).replace(/\s+/g, ' ').trim();
}

function inspectAt(code, cursor, detail) {
  const at = cpIndex(code, cursor);
  const tail = /^[\p{ID_Continue}$\u200c\u200d]*/u.exec(code.slice(at))[0];
  const text = code.slice(0, at) + tail;
  let match = new RegExp(`(${CHAIN})$`, 'u').exec(text);
  if (!match) match = new RegExp(`(${CHAIN})\\s*\\([^()]*$`, 'u').exec(code.slice(0, at)); // inside a call
  if (!match) return { found: false, data: {} };
  const name = match[1].replace(/\s+/g, '');
  const r = resolve(name.split(/\??\./));
  if (!r.ok) return { found: false, data: {} };
  const v = r.value;
  const lines = [`${name}: ${v === null ? 'null' : typeof v}`];
  if (typeof v === 'function') {
    lines.push(`signature: ${signature(v)}`);
    if (detail) {
      try {
        const src = Function.prototype.toString.call(v);
        lines.push('source:', src.length > 4000 ? `${src.slice(0, 4000)}\n...` : src);
      } catch (_) {
        /* no source */
      }
    }
  } else {
    try {
      const ctor = v !== null && v !== undefined && getPrototypeOf(Object(v)) && getPrototypeOf(Object(v)).constructor;
      if (ctor && ctor.name) lines.push(`class: ${ctor.name}`);
    } catch (_) {
      /* exotic object */
    }
    const shown = show(v, detail ? 2 : 0);
    lines.push(`value: ${shown.length > 4000 ? `${shown.slice(0, 4000)}...` : shown}`);
  }
  return { found: true, data: { 'text/plain': lines.join('\n') } };
}

// ---- globals for user code ----------------------------------------------------------------

function defineGlobals() {
  const cwd = process.cwd();
  const define = (name, value) => Object.defineProperty(G, name, { value, writable: true, configurable: true, enumerable: false });
  const userRequire = Module.createRequire(path.join(cwd, '<cell>'));
  wrk.userRequire = userRequire;
  define('require', userRequire);
  define('module', { exports: {}, require: userRequire, id: '<cell>', filename: path.join(cwd, '<cell>'), paths: userRequire.resolve.paths('x') });
  define('exports', G.module.exports);
  define('__filename', path.join(cwd, '<cell>'));
  define('__dirname', cwd);
  define('display', display);
  define('input', input);
  define('getpass', getpass);
  Object.defineProperty(G, `${INTERNAL}Resume`, { value: afterAwait, writable: false, configurable: false, enumerable: false });
  Object.defineProperty(G, `${INTERNAL}Import`, { value: userImport, writable: false, configurable: false, enumerable: false });
}

// ===========================================================================================
// Start: the role is picked last, once every declaration above is initialized.
// ===========================================================================================

if (process.argv[2] === '--worker') {
  worker();
} else if (process.argv[2] === '--supervisor') {
  supervisor();
} else {
  launcher();
}
