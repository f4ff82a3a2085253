'use strict';
// Issue 13: the instance side of fgd's protocol for Node.js functions (plain CommonJS, Node 18+).
//
// Started by the instance's keeper (runtimes/nodejs/keeper.py) inside a contained sandbox, as
// the instance's own uid, under seccomp, before any function is known. The protocol socket is
// fd 3, a private channel to the keeper fd 4. Frames are those of runtimes/protocol.py: a 4-byte
// big-endian length and a msgpack body, msgspec's tagged structs (a map whose first key "type"
// names the frame; every field present). Sequence:
//   -> Launched                      once the event loop runs (the daemon's pool member is ready)
//   <- Specialize                    forwarded to the keeper, which mounts code and dependencies;
//                                    then the handler (and initializer) are loaded
//   -> Ready | InitError
//   <- Invoke ...  -> Log* Result    requests run concurrently on the event loop (concurrent_num);
//                                    console output of a request is sent as Log frames with its id
//   <- Shutdown                      exit
// The daemon enforces timeouts and memory (it kills the whole instance).

const fs = require('fs');
const net = require('net');
const path = require('path');
const { AsyncLocalStorage } = require('async_hooks');
const { pathToFileURL } = require('url');
const Module = require('module');

const SHIM_MODULES = process.env.FGD_NODEJS_SHIM_MODULES || path.join(__dirname, 'node_modules');
const { Encoder, Decoder } = require(path.join(SHIM_MODULES, '@msgpack', 'msgpack'));

const SOCKET_FD = 3;
const KEEPER_FD = 4;
// runtimes/protocol.py's limits, on this side too.
const MAX_FRAME = 64 * 1024 * 1024;
const MAX_RESPONSE = 6 * 1024 * 1024;
const MAX_LOG_LINE = 64 * 1024;
const MAX_ERROR_TYPE = 128;
const MAX_ERROR_MESSAGE = 64 * 1024;
const MAX_STACK_LINES = 200;
const MAX_STACK_CHARS = 128 * 1024;
// Where the bundled modules' tree is shown in every sandbox (fgd.nodejs.BUNDLED_DIR).
const BUNDLED_DIR = process.env.FGD_NODEJS_BUNDLED || '';
const INSTANCE_FILE = __filename;
const SHIM_DIR = __dirname;

// Logger levels as runtimes/python/context.py has them.
const LEVELS = { DEBUG: 10, INFO: 20, WARN: 30, WARNING: 30, ERROR: 40, CRITICAL: 50, FATAL: 50 };
const LEVEL_NAMES = { 10: 'DEBUG', 20: 'INFO', 30: 'WARN', 40: 'ERROR', 50: 'CRITICAL' };
const LOG_LEVEL_VARIABLE = 'RUNTIME_LOG_LEVEL';

const encoder = new Encoder({ ignoreUndefined: false });
const decoder = new Decoder();

// What the launch environment told us; none of it is the function's.
for (const name of ['FGD_NODEJS_SHIM_MODULES', 'FGD_NODEJS_BUNDLED']) delete process.env[name];

// Frames ---------------------------------------------------------------------------------

const socket = new net.Socket({ fd: SOCKET_FD, readable: true, writable: true });

function send(frame) {
  const body = encoder.encode(frame);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length, 0);
  socket.write(Buffer.concat([header, Buffer.from(body.buffer, body.byteOffset, body.length)]));
}

function utf8(text) {
  // A JS string may hold lone surrogates; msgpack strings may not (the daemon refuses them).
  return typeof text.toWellFormed === 'function' ? text.toWellFormed() : Buffer.from(text, 'utf8').toString('utf8');
}

function logFrame(requestId, level, message) {
  if (message.length > MAX_LOG_LINE) {
    message = `${message.slice(0, MAX_LOG_LINE)} [... ${(message.length - MAX_LOG_LINE).toLocaleString('en')} more characters cut]`;
  }
  send({ type: 'Log', request_id: requestId, level, message: utf8(message) });
}

function frames(onFrame) {
  let pending = Buffer.alloc(0);
  socket.on('data', (chunk) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 4) {
      const size = pending.readUInt32BE(0);
      if (size > MAX_FRAME) process.exit(2);
      if (pending.length < 4 + size) break;
      const body = pending.subarray(4, 4 + size);
      pending = pending.subarray(4 + size);
      onFrame(decoder.decode(body), body);
    }
  });
  // The daemon closed our socket: nobody is left to serve.
  socket.on('end', () => process.exit(0));
  socket.on('error', () => process.exit(0));
}

// Errors -----------------------------------------------------------------------------------

function ownLine(line) {
  return line.includes(INSTANCE_FILE) || line.includes(SHIM_DIR + path.sep) || /\((node:|internal\/)/.test(line) || /at (node:|internal\/)/.test(line);
}

function bounded(errorType, message, stack) {
  const lines = [];
  let room = MAX_STACK_CHARS;
  for (const line of stack.slice(-MAX_STACK_LINES).reverse()) {
    if (room <= 0) break;
    const cut = line.slice(0, Math.min(MAX_LOG_LINE, room));
    lines.push(utf8(cut));
    room -= cut.length;
  }
  lines.reverse();
  return {
    error_type: utf8(String(errorType).slice(0, MAX_ERROR_TYPE)),
    error_message: utf8(String(message).slice(0, MAX_ERROR_MESSAGE)),
    stack_trace: lines,
  };
}

function describe(value) {
  if (typeof value === 'string') return value;
  try {
    const json = JSON.stringify(value);
    if (json !== undefined) return json;
  } catch (_) {
    // fall through
  }
  return String(value);
}

// FunctionGraph's {errorMessage, errorType, stackTrace} of whatever the function threw or
// passed to its callback: an Error's name, message and stack (without fgd's own frames), or
// any other value as its text.
function errorFrom(error, fallbackType = 'Error') {
  if (error instanceof Error || (error && typeof error === 'object' && typeof error.message === 'string' && typeof error.stack === 'string')) {
    let name;
    let message;
    let stack;
    try {
      name = error.name || (error.constructor && error.constructor.name) || fallbackType;
      message = error.message;
      stack = typeof error.stack === 'string' ? error.stack.split('\n').slice(1).map((l) => l.trim()) : [];
    } catch (_) {
      return bounded(fallbackType, '<the error could not be read>', []);
    }
    return bounded(name, message, stack.filter((l) => l && !ownLine(l)));
  }
  return bounded(fallbackType, describe(error), []);
}

class LoadError extends Error {
  constructor(errorType, message, stack) {
    super(message);
    this.report = bounded(errorType, message, stack || []);
  }
}

// Per-request output ---------------------------------------------------------------------

// The request whose code is running (through every callback and promise it starts).
const current = new AsyncLocalStorage();
// Requests (and the initializer) running now. A timer or promise a request left behind still
// carries its id after it ended: its output then goes to the pipes untagged, where the daemon
// treats it as any late output (a Log frame for an id it forgot would be a protocol breach).
const running = new Set();
// process.stdout's and process.stderr's own write, for output that belongs to no running request.
const untagged = {};

// process.stdout / process.stderr (and so console.*): lines written while a request runs go
// to the daemon as Log frames carrying its id, so concurrent requests' output never mixes.
// Output outside any request goes to the pipes, which the daemon attributes itself.
class RequestStreams {
  constructor() {
    this.partial = new Map();
    for (const name of ['stdout', 'stderr']) this.wrap(process[name], name);
  }

  wrap(stream, name) {
    const original = stream.write.bind(stream);
    untagged[name] = original;
    const self = this;
    stream.write = function write(chunk, encoding, callback) {
      const store = current.getStore();
      if (!store || !running.has(store.id)) return original(chunk, encoding, callback);
      const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
      self.write(store.id, name, text);
      const done = typeof encoding === 'function' ? encoding : callback;
      if (typeof done === 'function') process.nextTick(done);
      return true;
    };
  }

  write(requestId, name, text) {
    const key = `${requestId}\0${name}`;
    const lines = ((this.partial.get(key) || '') + text).split('\n');
    const rest = lines.pop();
    if (rest.length > MAX_LOG_LINE) lines.push(rest);
    else if (rest) this.partial.set(key, rest);
    if (!rest || rest.length > MAX_LOG_LINE) this.partial.delete(key);
    for (const line of lines) logFrame(requestId, name, line);
  }

  finish(requestId) {
    for (const name of ['stdout', 'stderr']) {
      const key = `${requestId}\0${name}`;
      const rest = this.partial.get(key);
      if (rest !== undefined) {
        this.partial.delete(key);
        logFrame(requestId, name, rest);
      }
    }
  }
}

// The context object ---------------------------------------------------------------------

function parseLevel(level) {
  if (typeof level === 'number' && Number.isInteger(level)) return level;
  if (typeof level === 'string') {
    const name = level.trim().toUpperCase();
    if (name in LEVELS) return LEVELS[name];
    if (/^[0-9]+$/.test(name)) return Number(name);
  }
  throw new Error(`Unknown level: ${describe(level)}`);
}

// The threshold is the instance's (one function per process): setLevel holds for later requests.
const loggerState = { level: null };

function format(message, args) {
  const util = require('util');
  return util.format(message, ...args);
}

class RuntimeLogger {
  constructor(emit, userData) {
    this.emit = emit;
    if (loggerState.level === null) {
      try {
        loggerState.level = parseLevel(userData[LOG_LEVEL_VARIABLE] !== undefined ? userData[LOG_LEVEL_VARIABLE] : 20);
      } catch (_) {
        loggerState.level = 20;
      }
    }
  }

  setLevel(level) {
    loggerState.level = parseLevel(level);
  }

  getLevel() {
    return loggerState.level;
  }

  log(level, message, ...args) {
    this.write(parseLevel(level), message, args);
  }

  debug(message, ...args) {
    this.write(10, message, args);
  }

  info(message, ...args) {
    this.write(20, message, args);
  }

  warn(message, ...args) {
    this.write(30, message, args);
  }

  error(message, ...args) {
    this.write(40, message, args);
  }

  write(level, message, args) {
    if (level < loggerState.level) return;
    this.emit(LEVEL_NAMES[level] || `LEVEL ${level}`, format(message, args));
  }
}

class Context {
  constructor(identity, requestId, deadline, credentials) {
    this.identity = identity;
    this.requestId = requestId;
    this.deadline = deadline;
    this.credentials = credentials || {};
    const emit = (level, text) => {
      if (running.has(requestId) || !untagged.stdout) logFrame(requestId, level, text);
      else untagged.stdout(`[${level}] ${text}\n`);
    };
    this.logger = new RuntimeLogger(emit, identity.user_data || {});
  }

  getRequestID() {
    return this.requestId;
  }

  getRemainingTimeInMilliSeconds() {
    return Math.max(0, Math.floor(this.deadline * 1000 - Date.now()));
  }

  getRunningTimeInSeconds() {
    return this.identity.timeout;
  }

  getFunctionName() {
    return this.identity.func_name;
  }

  getVersion() {
    return this.identity.version;
  }

  getAlias() {
    return this.identity.alias;
  }

  getMemorySize() {
    return this.identity.memory_size;
  }

  getCPUNumber() {
    return this.identity.cpu;
  }

  getPackage() {
    return this.identity.package;
  }

  getProjectID() {
    return this.identity.project_id;
  }

  getUserData(key, defaultValue) {
    const data = this.identity.user_data || {};
    return Object.prototype.hasOwnProperty.call(data, key) ? data[key] : defaultValue;
  }

  getLogger() {
    return this.logger;
  }

  // The function's agency credentials (fgd.agencies); empty strings when it names none. On
  // FunctionGraph getAccessKey/getSecretKey are the older names of the security ones.
  getAccessKey() {
    return this.credentials.access_key || '';
  }

  getSecretKey() {
    return this.credentials.secret_key || '';
  }

  getSecurityAccessKey() {
    return this.credentials.access_key || '';
  }

  getSecuritySecretKey() {
    return this.credentials.secret_key || '';
  }

  getSecurityToken() {
    return this.credentials.security_token || '';
  }

  getToken() {
    return this.credentials.auth_token || '';
  }
}

// Loading --------------------------------------------------------------------------------

function askKeeper(raw) {
  // The Specialize frame as received, once: the keeper mounts code and dependencies and
  // /etc's user tables, then closes the channel (it never reads another request).
  return new Promise((resolve) => {
    let keeper;
    try {
      keeper = new net.Socket({ fd: KEEPER_FD, readable: true, writable: true });
    } catch (error) {
      resolve(`error: no keeper: ${error.message}`);
      return;
    }
    const chunks = [];
    keeper.on('data', (chunk) => chunks.push(chunk));
    keeper.on('end', () => {
      keeper.destroy();
      resolve(Buffer.concat(chunks).toString('utf8'));
    });
    keeper.on('error', (error) => resolve(`error: ${error.message}`));
    const header = Buffer.alloc(4);
    header.writeUInt32BE(raw.length, 0);
    keeper.write(Buffer.concat([header, Buffer.from(raw)]));
  });
}

function setEnvironment(spec) {
  for (const name of Object.keys(process.env)) delete process.env[name];
  Object.assign(process.env, spec.environ);
  // FunctionGraph puts dependencies' modules on NODE_PATH: each dependency's node_modules (and
  // its root, for zips that hold the module folders directly), then the bundled modules, which
  // a function's own copy (code/node_modules, found first by require) or a dependency shadows.
  const paths = [];
  for (const dir of spec.dependency_dirs || []) paths.push(path.join(dir, 'node_modules'), dir);
  if (BUNDLED_DIR) paths.push(BUNDLED_DIR);
  if (process.env.NODE_PATH) paths.unshift(...process.env.NODE_PATH.split(path.delimiter).filter(Boolean));
  process.env.NODE_PATH = paths.join(path.delimiter);
  Module._initPaths();
}

async function resolve(codeDir, handler, role) {
  const dot = handler.lastIndexOf('.');
  const file = dot > 0 ? handler.slice(0, dot) : '';
  const name = dot > 0 ? handler.slice(dot + 1) : '';
  if (!file || !name) throw new LoadError('Runtime.HandlerNotFound', `${role} '${handler}' is not of the form file.function`);
  const modulePath = path.resolve(codeDir, file);
  if (modulePath !== codeDir && !modulePath.startsWith(codeDir + path.sep)) {
    throw new LoadError('Runtime.HandlerNotFound', `${role} '${handler}' names a file outside the code`);
  }
  let exported;
  try {
    exported = require(modulePath);
  } catch (error) {
    const missing = error && error.code === 'MODULE_NOT_FOUND' && String(error.message).includes(`'${modulePath}'`);
    // An ES module: `"type": "module"` (require refuses it) or a .mjs file (require does not look for one).
    const esm = error && error.code === 'ERR_REQUIRE_ESM' ? require.resolve(modulePath) : missing && fs.existsSync(`${modulePath}.mjs`) ? `${modulePath}.mjs` : '';
    if (esm) {
      try {
        exported = await import(pathToFileURL(esm).href);
      } catch (esmError) {
        const report = errorFrom(esmError);
        throw new LoadError('Runtime.ImportModuleError', `importing '${file}' failed: ${report.error_type}: ${report.error_message}`, report.stack_trace);
      }
    } else if (missing) {
      throw new LoadError('Runtime.ImportModuleError', `no module '${file}' in ${codeDir} for ${role} '${handler}'`);
    } else {
      const report = errorFrom(error);
      throw new LoadError('Runtime.ImportModuleError', `importing '${file}' failed: ${report.error_type}: ${report.error_message}`, report.stack_trace);
    }
  }
  let func = exported == null ? undefined : exported[name];
  if (typeof func !== 'function' && exported != null && exported.default != null) func = exported.default[name];
  if (typeof func !== 'function') {
    throw new LoadError('Runtime.HandlerNotFound', `${file}.js exports no function '${name}' (${role} '${handler}')`);
  }
  return func;
}

// Calls `func(...args, callback)`: settles with the callback, the returned promise, or (a
// function that takes no callback) its return value, whichever comes first.
function call(func, args, takesCallback) {
  return new Promise((resolvePromise, rejectPromise) => {
    let settled = false;
    const callback = (error, value) => {
      if (settled) return;
      settled = true;
      if (error !== undefined && error !== null) rejectPromise({ thrown: error });
      else resolvePromise(value);
    };
    let value;
    try {
      value = func(...args, callback);
    } catch (error) {
      if (!settled) {
        settled = true;
        rejectPromise({ thrown: error });
      }
      return;
    }
    if (value && typeof value.then === 'function') {
      value.then(
        (result) => callback(null, result),
        (error) => {
          if (settled) return;
          settled = true;
          rejectPromise({ thrown: error });
        },
      );
    } else if (!takesCallback) {
      callback(null, value);
    }
  });
}

function encodeResult(value) {
  if (typeof value === 'string') return Buffer.from(utf8(value), 'utf8');
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return Buffer.from(value);
  const json = JSON.stringify(value === undefined ? null : value);
  return Buffer.from(json === undefined ? 'null' : utf8(json), 'utf8');
}

function maxRssKb() {
  return process.resourceUsage().maxRSS;
}

// The instance ---------------------------------------------------------------------------

class Instance {
  constructor(spec, handler) {
    this.spec = spec;
    this.handler = handler;
    this.credentials = spec.identity.credentials || {};
    this.streams = null;
  }

  async invoke(frame) {
    if (frame.credentials) this.credentials = frame.credentials;
    const requestId = frame.request_id;
    const context = new Context(this.spec.identity, requestId, frame.deadline, this.credentials);
    running.add(requestId);
    const result = await current.run({ id: requestId }, () => this.run(frame, context));
    this.streams.finish(requestId);
    running.delete(requestId);
    send(result);
  }

  async run(frame, context) {
    const requestId = frame.request_id;
    let event;
    try {
      const text = Buffer.from(frame.event).toString('utf8');
      event = text ? JSON.parse(text) : {};
    } catch (error) {
      return { type: 'Result', request_id: requestId, body: null, error: errorFrom(error, 'Runtime.InvalidEvent'), max_rss_kb: maxRssKb() };
    }
    let value;
    try {
      value = await call(this.handler, [event, context], this.handler.length >= 3);
    } catch (failure) {
      return { type: 'Result', request_id: requestId, body: null, error: errorFrom(failure.thrown), max_rss_kb: maxRssKb() };
    }
    let body;
    try {
      body = encodeResult(value);
    } catch (error) {
      const report = bounded('Runtime.InvalidResponse', `the handler returned a value that is not JSON: ${error.message}`, []);
      return { type: 'Result', request_id: requestId, body: null, error: report, max_rss_kb: maxRssKb() };
    }
    if (body.length > MAX_RESPONSE) {
      const report = bounded('Runtime.ResponseTooLarge', `the response is ${body.length} bytes; the limit is ${MAX_RESPONSE}`, []);
      return { type: 'Result', request_id: requestId, body: null, error: report, max_rss_kb: maxRssKb() };
    }
    return { type: 'Result', request_id: requestId, body, error: null, max_rss_kb: maxRssKb() };
  }
}

async function specialize(spec, raw) {
  const started = process.hrtime.bigint();
  const answer = await askKeeper(raw);
  if (answer !== 'ok') {
    send({ type: 'InitError', error: bounded('Runtime.InitError', `sandbox: ${answer.replace(/^error: /, '')}`, []) });
    process.exit(71);
  }
  const workdir = spec.sandbox ? spec.sandbox.workdir : path.dirname(spec.code_dir);
  try {
    process.chdir(workdir);
  } catch (_) {
    // The code's parent, without mounts, may not be ours to enter; require works from absolute paths.
  }
  setEnvironment(spec);
  const streams = new RequestStreams();
  let instance;
  const initializerId = spec.initializer_request_id || 'initializer';
  try {
    const handler = await resolve(spec.code_dir, spec.handler, 'handler');
    instance = new Instance(spec, handler);
    instance.streams = streams;
    if (spec.initializer) {
      const init = await resolve(spec.code_dir, spec.initializer, 'initializer');
      const deadline = Date.now() / 1000 + spec.initializer_timeout;
      const context = new Context(spec.identity, initializerId, deadline, instance.credentials);
      running.add(initializerId);
      try {
        await current.run({ id: initializerId }, () => call(init, [context], init.length >= 2));
      } catch (failure) {
        const report = errorFrom(failure.thrown);
        throw new LoadError('Runtime.InitError', `initializer '${spec.initializer}' failed: ${report.error_type}: ${report.error_message}`, report.stack_trace);
      } finally {
        streams.finish(initializerId);
        running.delete(initializerId);
      }
    }
  } catch (error) {
    const report = error instanceof LoadError ? error.report : errorFrom(error, 'Runtime.InitError');
    send({ type: 'InitError', error: report });
    // Let the frame go out before leaving.
    socket.end(() => process.exit(0));
    return null;
  }
  send({ type: 'Ready', init_ms: Number(process.hrtime.bigint() - started) / 1e6 });
  return instance;
}

function main() {
  let instance = null;
  let specializing = false;
  frames((frame, raw) => {
    switch (frame.type) {
      case 'Specialize':
        if (specializing) process.exit(2);
        specializing = true;
        specialize(frame, raw).then(
          (ready) => {
            instance = ready;
          },
          (error) => {
            send({ type: 'InitError', error: errorFrom(error, 'Runtime.InitError') });
            socket.end(() => process.exit(70));
          },
        );
        break;
      case 'Invoke':
        if (instance === null) process.exit(2);
        instance.invoke(frame).catch(() => process.exit(70));
        break;
      case 'Shutdown':
        process.exit(0);
        break;
      default:
        process.exit(2);
    }
  });
  send({ type: 'Launched', pid: process.pid });
}

main();
