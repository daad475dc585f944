import { createFuzzSeeds, runFuzz } from './fuzz-engine';
import { makeTempDir } from './qemu-tools';

/**
 * A bounded, seeded fuzz run inside the suite (the long run is `npm run fuzz`). A finding prints
 * the iteration, which `npm run fuzz -- --seed 20261123 --start <i> --iterations 1` replays.
 */

let tmp: Awaited<ReturnType<typeof makeTempDir>>;
beforeAll(async () => {
  tmp = await makeTempDir('hp-fuzz-spec');
});
afterAll(async () => tmp.cleanup());

it('qcow2 and VHDX parsers and writers only ever fail with their own errors (seeded fuzz, 1500 iterations)', async () => {
  const seeds = await createFuzzSeeds(tmp.dir);
  const summary = await runFuzz({ seed: 20261123, iterations: 1500, seeds });
  expect(summary.unexpected).toEqual([]);
  // The mutations reach past the first checks: some images are still accepted, many reasons seen.
  expect(summary.accepted).toBeGreaterThan(100);
  expect(Object.keys(summary.rejected).length).toBeGreaterThanOrEqual(8);
  expect(summary.writes.succeeded).toBeGreaterThan(50);
}, 60_000);
