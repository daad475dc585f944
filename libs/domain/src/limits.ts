/** Bounds on what one partition may ask for; requests outside them are invalid input. */
export const PARTITION_LIMITS = {
  minVcpus: 1,
  maxVcpus: 512,
  minMemoryMiB: 16,
  /** 4 TiB. */
  maxMemoryMiB: 4 * 1024 * 1024,
  maxDiskGiB: 64 * 1024,
  maxLabels: 64,
  maxLabelKeyLength: 63,
  maxLabelValueLength: 256,
  maxDescriptionLength: 1024,
} as const;

/** Page sizes for every list (API.md, Lists). */
export const PAGE_LIMITS = { default: 50, max: 1000 } as const;

/** Largest request body the API accepts (413 above it). */
export const MAX_BODY_BYTES = 1024 * 1024;
