import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import { IsIn, IsInt, IsObject, IsOptional, IsString, Max, MaxLength, Min, ValidateNested } from 'class-validator';
import { PARTITION_LIMITS, PROJECT_ROLES } from '@hyperplane/domain';
import { IsDnsLabel } from '../common/validation';

/** POST /v1/projects */
export class CreateProjectInput {
  @ApiProperty({ example: 'team-a', description: 'DNS label, unique in the cluster' })
  @IsDnsLabel()
  name!: string;

  @ApiPropertyOptional()
  @IsOptional()
  @IsString()
  @MaxLength(PARTITION_LIMITS.maxDescriptionLength)
  description?: string;
}

/** A project's limits; an absent field is unlimited. */
export class QuotaInput {
  @ApiPropertyOptional({ minimum: 0 })
  @IsOptional()
  @IsInt()
  @Min(0)
  @Max(10_000_000)
  maxPartitions?: number;

  @ApiPropertyOptional({ minimum: 0 })
  @IsOptional()
  @IsInt()
  @Min(0)
  @Max(100_000_000)
  maxVcpus?: number;

  @ApiPropertyOptional({ minimum: 0 })
  @IsOptional()
  @IsInt()
  @Min(0)
  @Max(Number.MAX_SAFE_INTEGER)
  maxMemoryMiB?: number;
}

/** PATCH /v1/projects/{project} (cluster admins): description and quota (replaced whole). */
export class UpdateProjectInput {
  @ApiPropertyOptional()
  @IsOptional()
  @IsString()
  @MaxLength(PARTITION_LIMITS.maxDescriptionLength)
  description?: string;

  @ApiPropertyOptional({ type: QuotaInput })
  @IsOptional()
  @IsObject()
  @ValidateNested()
  @Type(() => QuotaInput)
  quota?: QuotaInput;
}

/** POST /v1/projects/{project}/tokens */
export class CreateTokenInput {
  @ApiProperty({ enum: PROJECT_ROLES, example: 'operator' })
  @IsIn(PROJECT_ROLES)
  role!: 'viewer' | 'operator' | 'admin';

  @ApiPropertyOptional()
  @IsOptional()
  @IsString()
  @MaxLength(PARTITION_LIMITS.maxDescriptionLength)
  description?: string;
}
