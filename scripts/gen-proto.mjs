// Generates TypeScript types for proto/ into libs/proto/src/generated (never edited by hand).
// Runtime loading is dynamic (@grpc/proto-loader) with the same options as libs/proto/src/index.ts.
import { execFileSync } from 'node:child_process';
import { readdirSync, rmSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const protoDir = join(root, 'proto');
const out = join(root, 'libs/proto/src/generated');
const files = [];
(function walk(dir) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith('.proto')) files.push(p.slice(protoDir.length + 1));
  }
})(protoDir);
rmSync(out, { recursive: true, force: true });
execFileSync(
  join(root, 'node_modules/.bin/proto-loader-gen-types'),
  ['--grpcLib=@grpc/grpc-js', `--outDir=${out}`, '--longs=Number', '--enums=String', '--oneofs', `--includeDirs=${protoDir}`, '--', ...files.sort()],
  { stdio: 'inherit' },
);
console.log(`proto: ${files.length} files -> libs/proto/src/generated`);

// Barrels, so code imports `v1.Partition` / `agentV1.AgentMessage` from @hyperplane/proto.
import { writeFileSync } from 'node:fs';
for (const [barrel, dir] of [['v1.ts', 'hyperplane/v1'], ['agent-v1.ts', 'hyperplane/agent/v1']]) {
  const names = readdirSync(join(out, dir)).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3)).sort();
  writeFileSync(join(out, barrel), names.map((n) => `export * from './${dir}/${n}';`).join('\n') + '\n');
}
