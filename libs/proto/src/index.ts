/**
 * Protocol definitions: the public API (`hyperplane.v1`) and the worker agent protocol
 * (`hyperplane.agent.v1`), loaded from proto/ at run time. Types under ./generated come from
 * `npm run proto` and are never edited by hand.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export * as v1 from './generated/v1';
export * as agentV1 from './generated/agent-v1';

/** proto-loader options; the generated types assume exactly these. */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: false,
  oneofs: true,
};

/** The proto/ directory, found from this package whether it runs from src (tests) or dist. */
export function protoRoot(): string {
  for (const up of ['../../../proto', '../../../../proto']) {
    const dir = join(__dirname, up);
    if (existsSync(join(dir, 'hyperplane'))) return dir;
  }
  throw new Error(`proto/ directory not found from ${__dirname}`);
}

/** The public API's proto files, relative to {@link protoRoot}. */
export const PUBLIC_PROTO_FILES = [
  'hyperplane/v1/common.proto',
  'hyperplane/v1/projects.proto',
  'hyperplane/v1/nodes.proto',
  'hyperplane/v1/operations.proto',
  'hyperplane/v1/partitions.proto',
  'hyperplane/v1/events.proto',
  'hyperplane/v1/images.proto',
  'hyperplane/v1/snapshots.proto',
  'hyperplane/v1/migration.proto',
];

/** The agent protocol's proto file, relative to {@link protoRoot}. */
export const AGENT_PROTO_FILE = 'hyperplane/agent/v1/agent.proto';

/** Loads proto files into a package definition (for servers, clients and reflection). */
export function loadDefinition(files: string[]): protoLoader.PackageDefinition {
  return protoLoader.loadSync(files, { ...PROTO_LOADER_OPTIONS, includeDirs: [protoRoot()] });
}

/** Loads proto files as a gRPC object tree (`tree.hyperplane.v1.PartitionService`). */
export function loadGrpcObject<T>(files: string[]): { definition: protoLoader.PackageDefinition; tree: T } {
  const definition = loadDefinition(files);
  return { definition, tree: grpc.loadPackageDefinition(definition) as unknown as T };
}
