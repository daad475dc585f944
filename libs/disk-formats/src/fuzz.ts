import { createFuzzSeeds, runFuzz } from './fuzz-engine';
import { makeTempDir } from './qemu-tools';

/**
 * `npm run fuzz`: a longer seeded fuzz run of the qcow2 and VHDX parsers and writers.
 *   --seed N        (or FUZZ_SEED)        default: random, printed so the run can be repeated
 *   --iterations N  (or FUZZ_ITERATIONS)  default: 20000
 *   --start N       (or FUZZ_START)       first iteration index (replay one finding: --start i --iterations 1)
 * Prints a summary; exits 1 if any iteration ended in an error that is not a DiskFormatError.
 * Needs qemu-img to make the seed images.
 */
function option(name: string, env: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const raw = i >= 0 ? process.argv[i + 1] : process.env[env];
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (!Number.isSafeInteger(v) || v < 0) throw new Error(`--${name} must be a non-negative integer, got ${raw}`);
  return v;
}

async function main(): Promise<void> {
  const seed = option('seed', 'FUZZ_SEED', Math.floor(Math.random() * 2 ** 31));
  const iterations = option('iterations', 'FUZZ_ITERATIONS', 20000);
  const start = option('start', 'FUZZ_START', 0);
  const tmp = await makeTempDir('hp-fuzz');
  try {
    const seeds = await createFuzzSeeds(tmp.dir);
    console.log(`fuzzing disk-formats: seed ${seed}, iterations ${start}..${start + iterations - 1}, ${seeds.length} seed images`);
    const summary = await runFuzz({ seed, iterations, start, seeds, log: (line) => console.log(line) });
    console.log(`accepted ${summary.accepted}, rejected ${JSON.stringify(summary.rejected)}`);
    console.log(`writes: ${JSON.stringify(summary.writes)}; ${summary.elapsedMs} ms`);
    for (const u of summary.unexpected.slice(0, 20)) console.log(`UNEXPECTED iteration ${u.iteration} (${u.seedImage}, ${u.step}): ${u.error}`);
    console.log(JSON.stringify({ seed, iterations, unexpected: summary.unexpected.length, elapsedMs: summary.elapsedMs }));
    process.exitCode = summary.unexpected.length ? 1 : 0;
  } finally {
    await tmp.cleanup();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 2;
});
