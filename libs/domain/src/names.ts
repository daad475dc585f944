/** RFC 1123 DNS label: lower-case letters, digits and '-', 1–63 characters, alphanumeric at both ends. */
export const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** Why `name` is not a DNS label, or null when it is one. */
export function dnsLabelProblem(name: string): string | null {
  if (name.length === 0) return 'must not be empty';
  if (name.length > 63) return `must be at most 63 characters (got ${name.length})`;
  if (!DNS_LABEL.test(name)) {
    return 'must be a DNS label: lower-case letters, digits and "-", starting and ending with a letter or digit';
  }
  return null;
}
