import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { IsIn, IsOptional, IsString, MaxLength } from 'class-validator';
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
