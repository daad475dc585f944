import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { IsBoolean, IsOptional, IsString, MaxLength } from 'class-validator';
import { PARTITION_LIMITS as L } from '@hyperplane/domain';
import { IsDnsLabel } from '../common/validation';

/** POST /v1/partitions/{id}/snapshots */
export class CreateSnapshotInput {
  @ApiProperty({ example: 'before-upgrade', description: 'DNS label, unique among the partition\'s snapshots' })
  @IsDnsLabel()
  name!: string;

  @ApiPropertyOptional()
  @IsOptional()
  @IsString()
  @MaxLength(L.maxDescriptionLength)
  description?: string;

  @ApiPropertyOptional({ description: 'Save memory and device state too (default: true when the partition runs; a stopped partition has only its disk)' })
  @IsOptional()
  @IsBoolean()
  memory?: boolean;
}

/** POST /v1/partitions/{id}/snapshots/{sid}/export */
export class ExportSnapshotInput {
  @ApiProperty({ example: 'web-golden', description: 'Name of the new image (DNS label, unique in the project)' })
  @IsDnsLabel()
  imageName!: string;
}
