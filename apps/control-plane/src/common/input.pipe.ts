import { ArgumentMetadata, Injectable, PipeTransform } from '@nestjs/common';
import { validateInput } from './validation';

/** REST: validates every `@Body()` against its DTO class with the same rules the gRPC door uses. */
@Injectable()
export class InputPipe implements PipeTransform {
  transform(value: unknown, metadata: ArgumentMetadata): unknown {
    if (metadata.type !== 'body' || !metadata.metatype || metadata.metatype === Object) return value;
    return validateInput(metadata.metatype as new () => object, value);
  }
}
