#!/usr/bin/env node
// A small gRPC command-line client for Hyperplane's public API (like grpcurl, which Debian does
// not package). It loads proto/ with @grpc/proto-loader and prints every answer as JSON.
//
//   node scripts/grpc.mjs [--addr 127.0.0.1:9090] [--token T] [--project P] Service/Method ['{"json":"request"}']
//   node scripts/grpc.mjs list
//
// The token defaults to $HYPERPLANE_TOKEN, then .hyperplane/admin-token. Server-streaming methods
// (EventService/Watch) print one JSON line per message until Ctrl-C.
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');
const root = join(dirname(fileURLToPath(import.meta.url)), '..');

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  if (i < 0) return def;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const addr = opt('--addr', `127.0.0.1:${process.env.HYPERPLANE_GRPC_PORT ?? 9090}`);
const tokenFile = join(process.env.HYPERPLANE_DATA_DIR ?? join(root, '.hyperplane'), 'admin-token');
const token = opt('--token', process.env.HYPERPLANE_TOKEN ?? (existsSync(tokenFile) ? readFileSync(tokenFile, 'utf8').trim() : ''));
const project = opt('--project', undefined);
const [target, body = '{}'] = args;

const files = readdirSync(join(root, 'proto/hyperplane/v1')).filter((f) => f.endsWith('.proto')).map((f) => `hyperplane/v1/${f}`);
const def = loader.loadSync(files, { includeDirs: [join(root, 'proto')], keepCase: false, longs: Number, enums: String, defaults: false, oneofs: true });
const pkg = grpc.loadPackageDefinition(def).hyperplane.v1;

if (!target || target === 'list') {
  for (const [name, svc] of Object.entries(pkg)) if (svc.service) console.log(`${name}: ${Object.keys(svc.service).join(', ')}`);
  process.exit(target ? 0 : 2);
}
const [service, method] = target.split('/');
if (!pkg[service]?.service?.[method]) {
  console.error(`unknown method ${target}; try: node scripts/grpc.mjs list`);
  process.exit(2);
}
let request;
try {
  request = JSON.parse(body);
} catch (e) {
  console.error(`request is not JSON: ${e.message}`);
  process.exit(2);
}
const client = new pkg[service](addr, grpc.credentials.createInsecure());
const md = new grpc.Metadata();
if (token) md.set('authorization', `Bearer ${token}`);
if (project) md.set('project', project);
const m = pkg[service].service[method];
const fail = (err) => {
  console.error(`${grpc.status[err.code] ?? err.code}: ${err.details}`);
  const details = err.metadata?.get('hp-error-details')[0];
  if (details) console.error(details);
  process.exit(1);
};
if (m.responseStream) {
  const call = client[method](request, md);
  call.on('data', (msg) => console.log(JSON.stringify(msg)));
  call.on('error', (err) => (err.code === grpc.status.CANCELLED ? process.exit(0) : fail(err)));
  process.on('SIGINT', () => call.cancel());
} else {
  client[method](request, md, (err, res) => {
    if (err) fail(err);
    console.log(JSON.stringify(res, null, 2));
    client.close();
  });
}
