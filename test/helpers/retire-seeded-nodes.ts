/** Jest setup for integration files: retire the nodes a file seeded once its tests are done. */
import { retireSeededNodes } from './db';

afterAll(retireSeededNodes);
