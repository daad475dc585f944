import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import { ArrayMaxSize, IsArray, IsBoolean, IsIn, IsInt, IsObject, IsOptional, IsString, Max, MaxLength, Min, MinLength, ValidateNested } from 'class-validator';

/** Most partitions one create may ask for. */
export const MAX_COUNT = 1000;
import { PARTITION_LIMITS as L } from '@hyperplane/domain';
import { IsDnsLabel, IsLabels } from '../common/validation';

/** Where a partition may go, and with whom. */
export class PlacementInput {
  @ApiPropertyOptional({ description: 'Node id or name to pin the partition to' })
  @IsOptional()
  @IsString()
  @MinLength(1)
  @MaxLength(63)
  node?: string;

  @ApiPropertyOptional({ description: 'Placement group (DNS label) this partition belongs to' })
  @IsOptional()
  @IsDnsLabel()
  group?: string;

  @ApiPropertyOptional({ enum: ['anti-affinity', 'affinity'], description: 'Group policy (default anti-affinity: never two on one node)' })
  @IsOptional()
  @IsIn(['anti-affinity', 'affinity'])
  policy?: 'anti-affinity' | 'affinity';

  @ApiPropertyOptional({ description: 'Hard (a rule, default) or soft (a preference) group policy' })
  @IsOptional()
  @IsBoolean()
  hard?: boolean;

  @ApiPropertyOptional({ enum: ['binpack', 'spread'], description: 'Default: the cluster setting (HYPERPLANE_PLACEMENT_STRATEGY)' })
  @IsOptional()
  @IsIn(['binpack', 'spread'])
  strategy?: 'binpack' | 'spread';

  @ApiPropertyOptional({ type: 'object', additionalProperties: { type: 'string' }, description: 'Node labels that must match' })
  @IsOptional()
  @IsLabels()
  nodeSelector?: Record<string, string>;

  @ApiPropertyOptional({ enum: ['kvm', 'tcg'] })
  @IsOptional()
  @IsIn(['kvm', 'tcg'])
  accelerator?: 'kvm' | 'tcg';

  @ApiPropertyOptional({ type: [String], description: 'Host CPU features the guest needs (e.g. avx2)' })
  @IsOptional()
  @IsArray()
  @ArrayMaxSize(64)
  @IsString({ each: true })
  @MaxLength(64, { each: true })
  cpuFeatures?: string[];

  @ApiPropertyOptional({ example: 'pc' })
  @IsOptional()
  @IsString()
  @MaxLength(64)
  machineType?: string;
}

/** POST /v1/partitions */
export class CreatePartitionInput {
  @ApiProperty({ example: 'web-1', description: 'DNS label, unique in the project' })
  @IsDnsLabel()
  name!: string;

  @ApiProperty({ example: 1, minimum: L.minVcpus, maximum: L.maxVcpus })
  @IsInt()
  @Min(L.minVcpus)
  @Max(L.maxVcpus)
  vcpus!: number;

  @ApiProperty({ example: 256, minimum: L.minMemoryMiB, maximum: L.maxMemoryMiB })
  @IsInt()
  @Min(L.minMemoryMiB)
  @Max(L.maxMemoryMiB)
  memoryMiB!: number;

  @ApiProperty({ example: 'sample', description: 'Image name' })
  @IsString()
  @MinLength(1)
  @MaxLength(255)
  image!: string;

  @ApiPropertyOptional({ example: 4, description: 'Disk size in GiB (default: the image size, at least 1)' })
  @IsOptional()
  @IsInt()
  @Min(1)
  @Max(L.maxDiskGiB)
  diskGiB?: number;

  @ApiPropertyOptional({ example: { env: 'prod' }, type: 'object', additionalProperties: { type: 'string' } })
  @IsOptional()
  @IsLabels()
  labels?: Record<string, string>;

  @ApiPropertyOptional()
  @IsOptional()
  @IsString()
  @MaxLength(L.maxDescriptionLength)
  description?: string;

  @ApiPropertyOptional({ example: 3, minimum: 1, maximum: MAX_COUNT, description: 'Create this many at once, named NAME-1..NAME-N (all or nothing)' })
  @IsOptional()
  @IsInt()
  @Min(1)
  @Max(MAX_COUNT)
  count?: number;

  @ApiPropertyOptional({ type: PlacementInput })
  @IsOptional()
  @IsObject()
  @ValidateNested()
  @Type(() => PlacementInput)
  placement?: PlacementInput;
}

/** PATCH /v1/partitions/{id}: labels are merged (a null value removes a key) unless replaceLabels. */
export class UpdatePartitionInput {
  @ApiPropertyOptional({ type: 'object', additionalProperties: { type: 'string', nullable: true } })
  @IsOptional()
  @IsObject()
  labels?: Record<string, string | null>;

  @ApiPropertyOptional({ description: 'Replace all labels instead of merging' })
  @IsOptional()
  @IsBoolean()
  replaceLabels?: boolean;

  @ApiPropertyOptional()
  @IsOptional()
  @IsString()
  @MaxLength(L.maxDescriptionLength)
  description?: string;
}

/** POST /v1/partitions/{id}/stop */
export class StopPartitionInput {
  @ApiPropertyOptional({ description: 'Quit at once instead of an ACPI shutdown with a grace period' })
  @IsOptional()
  @IsBoolean()
  force?: boolean;

  @ApiPropertyOptional({ description: 'Seconds to wait for the guest to power off before forcing (default 30)' })
  @IsOptional()
  @IsInt()
  @Min(0)
  @Max(3600)
  graceSeconds?: number;
}

/** Bodies of POST start/reboot and DELETE: nothing, but unknown fields are still refused. */
export class EmptyInput {}
