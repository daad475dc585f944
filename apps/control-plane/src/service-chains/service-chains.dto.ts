import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import { ArrayMaxSize, ArrayMinSize, IsArray, IsBoolean, IsInt, IsObject, IsOptional, IsString, Max, MaxLength, Min, MinLength, ValidateNested } from 'class-validator';
import { PARTITION_LIMITS as L } from '@hyperplane/domain';
import { IsDnsLabel } from '../common/validation';
import { CHAIN_LIMITS, LINK_KINDS } from './chain-rules';

/** Limits of a throttle link; 0 or absent is no limit on that measure. */
export class ThrottleInput {
  @ApiPropertyOptional({ example: 500 }) @IsOptional() @IsInt() @Min(0) @Max(10_000_000) iopsTotal?: number;
  @ApiPropertyOptional() @IsOptional() @IsInt() @Min(0) @Max(10_000_000) iopsRead?: number;
  @ApiPropertyOptional() @IsOptional() @IsInt() @Min(0) @Max(10_000_000) iopsWrite?: number;
  @ApiPropertyOptional({ example: 52428800 }) @IsOptional() @IsInt() @Min(0) @Max(2 ** 40) bpsTotal?: number;
  @ApiPropertyOptional() @IsOptional() @IsInt() @Min(0) @Max(2 ** 40) bpsRead?: number;
  @ApiPropertyOptional() @IsOptional() @IsInt() @Min(0) @Max(2 ** 40) bpsWrite?: number;
}

/** One link of a chain (POST /v1/service-chains `links[]`, POST /v1/service-chains/{id}/links). */
export class LinkInput {
  @ApiProperty({ example: 'base', description: 'DNS label, unique in the chain' })
  @IsDnsLabel()
  name!: string;

  @ApiProperty({ enum: LINK_KINDS, description: 'base (first link only), overlay (copy-on-write), encrypt (LUKS), throttle (IOPS/bandwidth), cache (copy-on-read)' })
  @IsString()
  kind!: string;

  @ApiPropertyOptional({ description: 'The link it consumes; must be the one right below it (default)' })
  @IsOptional()
  @IsString()
  @MaxLength(63)
  consumes?: string;

  @ApiPropertyOptional({ example: 2, minimum: 1, maximum: CHAIN_LIMITS.maxReplicas, description: 'Providers serving this link, on different nodes (default 1)' })
  @IsOptional()
  @IsInt()
  replicas?: number;

  @ApiPropertyOptional({ example: 'sample', description: 'base: image in the nodes\' store the disk starts from' })
  @IsOptional()
  @IsString()
  @MinLength(1)
  @MaxLength(255)
  image?: string;

  @ApiPropertyOptional({ example: 67108864, description: 'base: disk size (a blank disk without image; at least the image size with one)' })
  @IsOptional()
  @IsInt()
  sizeBytes?: number;

  @ApiPropertyOptional({ description: 'encrypt: the 32-byte key, base64; absent: the control plane makes one. Never shown again.' })
  @IsOptional()
  @IsString()
  @MaxLength(1024)
  key?: string;

  @ApiPropertyOptional({ type: ThrottleInput })
  @IsOptional()
  @IsObject()
  @ValidateNested()
  @Type(() => ThrottleInput)
  throttle?: ThrottleInput;

  @ApiPropertyOptional({ type: [String], description: 'Nodes (names or ids) to run the replicas on, one per replica; the rest are placed by the scheduler' })
  @IsOptional()
  @IsArray()
  @ArrayMaxSize(CHAIN_LIMITS.maxReplicas)
  @IsString({ each: true })
  @MaxLength(63, { each: true })
  nodes?: string[];
}

/** POST /v1/service-chains */
export class CreateServiceChainInput {
  @ApiProperty({ example: 'db-disk', description: 'DNS label, unique in the project' })
  @IsDnsLabel()
  name!: string;

  @ApiPropertyOptional()
  @IsOptional()
  @IsString()
  @MaxLength(L.maxDescriptionLength)
  description?: string;

  @ApiProperty({ type: [LinkInput], description: 'The links in series, base first' })
  @IsArray()
  @ArrayMinSize(1)
  @ArrayMaxSize(CHAIN_LIMITS.maxLinks)
  @ValidateNested({ each: true })
  @Type(() => LinkInput)
  links!: LinkInput[];
}

/** POST /v1/service-chains/{id}/links/{link}/replicas */
export class AddReplicaInput {
  @ApiPropertyOptional({ description: 'Node (name or id) to run it on; default: the scheduler picks one without a replica of the link' })
  @IsOptional()
  @IsString()
  @MinLength(1)
  @MaxLength(63)
  node?: string;
}

/** POST /v1/partitions/{id}/attachments */
export class AttachInput {
  @ApiProperty({ description: 'Id of the service chain' })
  @IsString()
  @MinLength(1)
  @MaxLength(64)
  chainId!: string;

  @ApiPropertyOptional({ description: 'Link to attach at (default: the head, all layers); an earlier link gives only the layers up to it, read-only' })
  @IsOptional()
  @IsString()
  @MaxLength(63)
  link?: string;

  @ApiPropertyOptional({ description: 'Attach read-only (links below the head always are)' })
  @IsOptional()
  @IsBoolean()
  readOnly?: boolean;
}

