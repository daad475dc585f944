/**
 * One timer for many nodes: heartbeats, reconnect delays and registration deadlines of every node
 * in the process are checked on each tick, so a process with a thousand hollow nodes has one
 * timer, not thousands.
 */

/** Something that wants to be called on every tick with the current time. */
export interface TickMember {
  tick(now: number): void;
}

/** A shared periodic timer; it runs only while it has members. */
export class Ticker {
  private readonly members = new Set<TickMember>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    /** Tick period: the resolution of every deadline checked on it. */
    readonly periodMs = 250,
    private readonly onError: (error: unknown) => void = () => undefined,
  ) {}

  /** Adds a member; starts the timer if it was idle. */
  add(member: TickMember): void {
    this.members.add(member);
    this.timer ??= setInterval(() => this.tickAll(), this.periodMs);
  }

  /** Removes a member; stops the timer when none is left. */
  remove(member: TickMember): void {
    this.members.delete(member);
    if (this.members.size === 0) this.stop();
  }

  /** Stops the timer (members stay; `add` restarts it). */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private tickAll(): void {
    const now = Date.now();
    for (const member of this.members) {
      try {
        member.tick(now);
      } catch (error) {
        this.onError(error);
      }
    }
  }
}
