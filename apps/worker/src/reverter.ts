/**
 * Undo stack for work that has side effects and can fail halfway (the Incus reverter idea): each
 * step that changes the world registers how to take it back; on failure the undos run newest
 * first, on success they are dropped.
 */

/** One undo step; it may be async. */
export type Undo = () => void | Promise<void>;

/**
 * Collects undo steps while a multi-step action runs. Call `add` right after each side effect
 * succeeded, then exactly one of `success()` (keep everything) or `fail()` (take everything back).
 * `fail` runs every undo even when some throw, and resolves with the errors it met (it never
 * rejects), so it is safe in a `catch` or `finally`.
 */
export class Reverter {
  private undos: Undo[] = [];

  /** Registers the undo of a step that just succeeded. */
  add(undo: Undo): void {
    this.undos.push(undo);
  }

  /** Number of undo steps currently held. */
  get size(): number {
    return this.undos.length;
  }

  /** Keeps every change: the undos are forgotten. */
  success(): void {
    this.undos = [];
  }

  /**
   * Runs the undos in reverse order of registration, one after the other, and forgets them (a
   * second call does nothing). Resolves with the errors thrown by undos, in the order they ran.
   */
  async fail(): Promise<unknown[]> {
    const undos = this.undos.reverse();
    this.undos = [];
    const errors: unknown[] = [];
    for (const undo of undos) {
      try {
        await undo();
      } catch (error) {
        errors.push(error);
      }
    }
    return errors;
  }
}
