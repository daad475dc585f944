/**
 * Builds a WHERE clause from the conditions that apply, so every query the planner sees is a plain
 * conjunction it can turn into index conditions (`project_id = $1 AND id > $2` on the
 * (project_id, id) index), never `($2 IS NULL OR id > $2)`, which it cannot.
 */
export class Where {
  private readonly parts: string[] = [];
  readonly params: unknown[] = [];

  /** Adds `fragment` with its `?` bound to `value`; skipped when value is undefined or null. */
  add(fragment: string, value: unknown): this {
    if (value === undefined || value === null) return this;
    this.params.push(value);
    this.parts.push(fragment.replace('?', `$${this.params.length}`));
    return this;
  }

  /** The next placeholder, binding `value` (for LIMIT and the like). */
  bind(value: unknown): string {
    this.params.push(value);
    return `$${this.params.length}`;
  }

  /** `WHERE a AND b`, or '' when there are no conditions. */
  toString(): string {
    return this.parts.length ? `WHERE ${this.parts.join(' AND ')}` : '';
  }
}
