import { FailedPreconditionError, PayloadTooLargeError, ValidationError } from '@hyperplane/domain';
import { DiskFormatError, ImageRejectedError, MetadataInvalidError, MetadataTooLargeError, MetadataUnsupportedError } from '@hyperplane/disk-formats';

/** Maps disk-formats errors (a library's own classes) to domain errors for both transports. */
export function diskFormatDomainError(e: unknown, what: string): unknown {
  if (e instanceof ImageRejectedError) return new ValidationError([{ field: 'body', message: `${what} rejected (${e.reason}): ${e.message}` }], `${what} rejected (${e.reason}): ${e.message}`);
  if (e instanceof MetadataInvalidError) return new ValidationError(e.errors.map((f) => ({ field: f.field ? `metadata.${f.field}` : 'metadata', message: f.message })));
  if (e instanceof MetadataTooLargeError) return new PayloadTooLargeError(`metadata needs ${e.neededBytes} bytes but the image has room for ${e.availableBytes}`);
  if (e instanceof MetadataUnsupportedError) return new FailedPreconditionError(`${what}: ${e.message}`);
  if (e instanceof DiskFormatError) return new ValidationError([{ field: 'body', message: e.message }]);
  return e;
}

