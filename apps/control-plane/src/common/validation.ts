/**
 * Input validation shared by both transports: REST bodies and gRPC requests go through the same
 * DTO classes and the same messages. Unknown fields are rejected, types are not coerced.
 */
import { ValidationError, FieldError, dnsLabelProblem, PARTITION_LIMITS } from '@hyperplane/domain';
import { plainToInstance } from 'class-transformer';
import { ValidationError as CvError, registerDecorator, ValidationArguments, validateSync } from 'class-validator';

function flatten(errors: CvError[], prefix = ''): FieldError[] {
  const out: FieldError[] = [];
  for (const e of errors) {
    const field = prefix ? `${prefix}.${e.property}` : e.property ?? '';
    const messages = Object.values(e.constraints ?? {});
    // A wrong type makes every range check fail too; the type is the one thing worth saying.
    const typeError = messages.find((m) => / must be (a|an) /.test(m) || m.endsWith(' should not exist'));
    for (const msg of typeError ? [typeError] : messages) {
      // class-validator words it "property x should not exist"; say which field, plainly.
      const message = msg.startsWith('property ') && msg.endsWith(' should not exist') ? 'is not a known field' : msg.replace(new RegExp(`^${escape(e.property ?? '')} `), '');
      out.push({ field, message });
    }
    if (e.children?.length) out.push(...flatten(e.children, field));
  }
  return out;
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Validates a plain object against a DTO class and returns the typed instance.
 * Throws {@link ValidationError} naming every offending field.
 */
export function validateInput<T extends object>(cls: new () => T, input: unknown, what = 'request body'): T {
  if (input === undefined || input === null) input = {};
  if (typeof input !== 'object' || Array.isArray(input)) {
    throw new ValidationError([{ field: '', message: `${what} must be a JSON object` }]);
  }
  const instance = plainToInstance(cls, input, { enableImplicitConversion: false, exposeDefaultValues: false });
  const errors = validateSync(instance as object, {
    whitelist: true,
    forbidNonWhitelisted: true,
    forbidUnknownValues: false,
    validationError: { target: false, value: false },
  });
  if (errors.length > 0) throw new ValidationError(flatten(errors));
  return instance;
}

/** Property must be a DNS label (lower-case, 1–63 characters). */
export function IsDnsLabel() {
  return (object: object, propertyName: string) =>
    registerDecorator({
      name: 'isDnsLabel',
      target: object.constructor,
      propertyName,
      validator: {
        validate: (value: unknown) => typeof value === 'string' && dnsLabelProblem(value) === null,
        defaultMessage: (args: ValidationArguments) =>
          typeof args.value !== 'string' ? 'must be a string' : `${dnsLabelProblem(args.value)} (got ${JSON.stringify(args.value)})`,
      },
    });
}

/** Property must be a string→string map of labels with DNS-label-like keys. */
export function IsLabels() {
  return (object: object, propertyName: string) =>
    registerDecorator({
      name: 'isLabels',
      target: object.constructor,
      propertyName,
      validator: {
        validate: (value: unknown) => labelsProblem(value) === null,
        defaultMessage: (args: ValidationArguments) => labelsProblem(args.value) ?? 'invalid labels',
      },
    });
}

const LABEL_KEY = /^([a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$/;

/** Why `value` is not a valid label map, or null. */
export function labelsProblem(value: unknown): string | null {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'must be an object of string values';
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length > PARTITION_LIMITS.maxLabels) return `must have at most ${PARTITION_LIMITS.maxLabels} labels`;
  for (const [k, v] of entries) {
    if (k.length > PARTITION_LIMITS.maxLabelKeyLength || !LABEL_KEY.test(k)) return `key ${JSON.stringify(k)} is not a valid label key`;
    if (typeof v !== 'string') return `value of ${JSON.stringify(k)} must be a string`;
    if (v.length > PARTITION_LIMITS.maxLabelValueLength) return `value of ${JSON.stringify(k)} is longer than ${PARTITION_LIMITS.maxLabelValueLength}`;
  }
  return null;
}

/** Parses `key:value` label selectors (`?label=env:prod`) into a map. */
export function parseLabelSelectors(raw: unknown): Record<string, string> {
  const list = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
  const out: Record<string, string> = {};
  for (const item of list) {
    if (typeof item !== 'string' || !item.includes(':')) throw ValidationError.field('label', `must be key:value (got ${JSON.stringify(item)})`);
    const i = item.indexOf(':');
    out[item.slice(0, i)] = item.slice(i + 1);
  }
  return out;
}
